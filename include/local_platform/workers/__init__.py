"""Work in the background: ``deployment`` (a version becomes READY), ``batch`` (a batch job's life) with its engines
(``local_engine``, ``beam_engine``, sharing ``batch_instances``), ``training`` (a training job's life) with its
process (``trainer_process``, started by ``trainer_sandbox.spawn``), ``recovery`` and ``supervisor`` (start, resume
after a restart, stop)."""
