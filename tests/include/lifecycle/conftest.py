"""The lifecycle decisions read ml/v1 and GCS through the plugin's hook: the plugin tests' fixtures."""

from __future__ import annotations

from tests.plugins.conftest import airflow_db, hook, ml_conn, model_name, tiny_model_uri  # noqa: F401
