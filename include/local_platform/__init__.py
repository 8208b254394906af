"""The local service: Google's ml/v1 REST API (and, beside it, Vertex AI's) on one machine, faithfully.

Layers, top to bottom; imports point down only (tests/include/local_platform/test_layout.py):

- ``app.py`` / ``__main__.py``: wiring and the command line.
- ``api/``: the wires. HTTP routes and middleware, where a request is checked and answered.
- ``workers/``: work in the background: deployments, batch jobs (two engines), training jobs, recovery.
- ``resources/``: the rules of each resource: validation, names, what a request may change.
- ``context.py``: what every layer shares (store, loaded models, work queue, stop signals).
- ``state/`` and ``serving/``: the durable store (the one compare-and-set for states, crash points),
  and the TensorFlow runtime (SavedModels, tensors, predictions, the model cache).
- ``errors.py``, ``gcs.py``: Google's error shapes; GCS access with checked local paths.
"""
