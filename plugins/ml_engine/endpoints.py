"""Which ml/v1 service an endpoint URL names: Google's (global or regional) or a local one.

Kept free of heavy imports: links and operators use it at DAG parse time.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

GLOBAL_ENDPOINT = "https://ml.googleapis.com/"
GOOGLE_DOMAIN = "googleapis.com"
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _hostname(authority: str) -> str:
    """The host of a URL's authority (``host``, ``host:port``, ``[v6]:port``, ``user@host``), lower case,
    without one trailing dot."""
    try:
        host = urlparse(f"//{authority}").hostname or ""
    except ValueError:  # e.g. an unclosed "[" or a port out of range
        return ""
    return host[:-1] if host.endswith(".") else host


def is_google_host(authority: str) -> bool:
    """True only for googleapis.com itself and its subdomains (a dot boundary: not attacker-googleapis.com).

    Case-insensitive, a port and one trailing dot (the fully qualified form) are ignored; every label
    must be a plain DNS label. Anything else (localhost, an IP address, a look-alike) is not Google's.
    """
    host = _hostname(authority)
    if host == GOOGLE_DOMAIN:
        return True
    if not host.endswith("." + GOOGLE_DOMAIN):
        return False
    subdomain = host[: -len("." + GOOGLE_DOMAIN)]
    return all(_DNS_LABEL.fullmatch(label) for label in subdomain.split("."))


def is_local_endpoint(endpoint: str | None) -> bool:
    """True for an endpoint that is not one of Google's (the local ml/v1 service); None: Google's global one.

    The hook sends Google credentials only where this is False, so it must be False only for
    ``googleapis.com`` and ``*.googleapis.com`` (see ``is_google_host``).
    """
    if not endpoint:
        return False
    try:
        authority = urlparse(endpoint.strip()).netloc
    except ValueError:
        return True
    return not is_google_host(authority)


def normalize_endpoint(endpoint: str | None) -> str | None:
    """Endpoint with a trailing slash so googleapiclient joins paths under it."""
    if not endpoint:
        return None
    endpoint = endpoint.strip()
    return endpoint if endpoint.endswith("/") else endpoint + "/"


def regional_endpoint(region: str) -> str:
    """ml/v1's regional endpoint, e.g. https://us-central1-ml.googleapis.com/."""
    return f"https://{region}-ml.googleapis.com/"
