"""The project's importable code: settings, lifecycle decisions, the trainer, the local ml/v1 service.

Importing it quiets TensorFlow's native start-up banner (see include/native_logs.py),
so that task logs show no stderr "errors" that are none.
"""

from include import native_logs

native_logs.install()
