"""The Assets: one definition each for the DAGs that emit them and the DAGs scheduled on them.

Its URI has an `x-` scheme on purpose. Airflow normalises an Asset URI with any other
scheme through the providers' URI handlers, which starts provider discovery in every
DAG-parse process: 1-5 s per file, on every re-parse. `x-` URIs are taken as they are.
Airflow 3 shows the Asset by its name in the Assets view; the URI says what it stands for.
"""

from __future__ import annotations

from airflow.sdk import Asset

from include import config


def promotion_asset(model_name: str | None = None) -> Asset:
    """The Asset updated whenever the model's default version changes (promotion, rollback, set_default)."""
    cfg = config.load()
    model = model_name or cfg.model_name
    return Asset(name=f"{model}_default_version", uri=cfg.promotion_asset_uri(model), group="ml-engine",
                 extra={"model": model})


def data_asset(model_name: str | None = None) -> Asset:
    """The Asset updated whenever a new period of training data arrives (extra: period, data_uri)."""
    cfg = config.load()
    model = model_name or cfg.model_name
    return Asset(name=f"{model}_training_data", uri=cfg.data_asset_uri(model), group="ml-engine",
                 extra={"model": model})
