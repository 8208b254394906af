"""Which ml/v1 service an endpoint URL names: Google's (global or regional) or a local one.

Kept free of heavy imports: links and operators use it at DAG parse time.
"""

from __future__ import annotations

from urllib.parse import urlparse

GLOBAL_ENDPOINT = "https://ml.googleapis.com/"


def is_local_endpoint(endpoint: str | None) -> bool:
    """True for an endpoint that is not one of Google's (the local ml/v1 service)."""
    if not endpoint:
        return False
    host = urlparse(endpoint).hostname or ""
    return not host.endswith("googleapis.com")


def normalize_endpoint(endpoint: str | None) -> str | None:
    """Endpoint with a trailing slash so googleapiclient joins paths under it."""
    if not endpoint:
        return None
    endpoint = endpoint.strip()
    return endpoint if endpoint.endswith("/") else endpoint + "/"


def regional_endpoint(region: str) -> str:
    """ml/v1's regional endpoint, e.g. https://us-central1-ml.googleapis.com/."""
    return f"https://{region}-ml.googleapis.com/"
