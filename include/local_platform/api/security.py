"""Who may call the service, and from where: bearer token, Host and Origin checks, JSON-only bodies, CSRF.

The service runs on a developer's laptop next to a browser. Three things keep a
page on another origin from driving it:

- the bearer token (when configured) on every ``/v1/`` and ``/_local/`` request;
  a browser never sends it on its own; the pages (``/``, ``/ui...``) need it too, as the
  ``Authorization`` header or as the session cookie ``/ui/login`` sets from it
  (HttpOnly, SameSite=Strict: a page on another site can neither read nor send it);
- the Host check (DNS rebinding: a foreign name resolving to 127.0.0.1) and
  the Origin check (a form or fetch sent from another site);
- ``/v1`` bodies must be ``application/json``, which a plain HTML form cannot send
  without a CORS preflight (the service answers none), and the upload form
  carries a CSRF token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from starlette.responses import JSONResponse, RedirectResponse

from include.local_platform.errors import ApiError

log = logging.getLogger("local_platform")

TOKEN_ENV = "ML_ENGINE_TOKEN"
ALLOWED_HOSTS_ENV = "ML_ENGINE_ALLOWED_HOSTS"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: Google's texts for a request without credentials and for one with wrong credentials.
MISSING_CREDENTIALS = ("Request is missing required authentication credential. Expected OAuth 2 access token, "
                       "login cookie or other valid authentication credential. "
                       "See https://developers.google.com/identity/sign-in/web/devconsole-project.")
INVALID_CREDENTIALS = ("Request had invalid authentication credentials. Expected OAuth 2 access token, "
                       "login cookie or other valid authentication credential. "
                       "See https://developers.google.com/identity/sign-in/web/devconsole-project.")
#: Methods whose body the service reads; a body there must be JSON.
BODY_METHODS = frozenset({"POST", "PATCH", "PUT"})
PROTECTED_PREFIXES = ("/v1/", "/_local/")
#: Pages anyone may open: the login form (and logging out).
OPEN_PAGES = frozenset({"/ui/login", "/ui/logout"})
SESSION_COOKIE = "ml_engine_session"
MAX_TOKEN_CHARS = 4096


def is_page(path: str) -> bool:
    return path in ("/", "/ui") or path.startswith("/ui/")


def read_token(token_file: Path | None) -> str | None:
    """The token from ``--token-file`` (its first line) or ML_ENGINE_TOKEN; None when neither is set.

    The file must be readable by its owner only (like an SSH key) and hold one line of 16 to 4096
    characters; anything else stops the service with a message that says what to fix.
    """
    if token_file is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    mode = token_file.stat().st_mode
    if mode & 0o077:
        raise ValueError(f"token file {token_file} is readable by other users (mode {mode & 0o777:o}); "
                         f"chmod 600 {token_file}")
    with token_file.open("rb") as stream:
        head = stream.read(MAX_TOKEN_CHARS + 2)
    token = head.split(b"\n", 1)[0].strip().decode("ascii", "replace")
    if not 16 <= len(token) <= MAX_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise ValueError(f"token file {token_file}: its first line must be one token of 16 to {MAX_TOKEN_CHARS} "
                         "printable characters without spaces")
    return token


def _hostname(host_header: str) -> str:
    """``[::1]:8780`` -> ``::1``, ``Localhost:8780`` -> ``localhost``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass
class Guard:
    """The service's access rules, decided once at start."""

    token: str | None = None
    bind_host: str = "127.0.0.1"
    extra_hosts: frozenset[str] = frozenset()
    csrf_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def from_settings(cls, *, token: str | None, bind_host: str, allowed_hosts: str) -> Guard:
        """From the command line: ``allowed_hosts`` is a comma-separated list of extra Host names."""
        extra = frozenset(h.strip().lower() for h in allowed_hosts.split(",") if h.strip())
        return cls(token=token, bind_host=bind_host, extra_hosts=extra)

    def announce(self) -> None:
        if self.token is None:
            log.warning("no token configured (%s or --token-file): /v1 and /_local accept anonymous requests; "
                        "anything that can reach this port can deploy and run models", TOKEN_ENV)
        else:
            log.info("bearer token required on /v1, /_local and the pages (/ui/login takes it once per browser)")

    # --- Host and Origin --------------------------------------------------------

    def host_allowed(self, hostname: str) -> bool:
        if hostname in LOOPBACK_NAMES or hostname in self.extra_hosts:
            return True
        bind = self.bind_host.lower()
        if bind not in ("0.0.0.0", "::", "") and hostname == bind:
            return True
        try:
            return ipaddress.ip_address(hostname).is_loopback
        except ValueError:
            return False

    def check_host(self, host_header: str | None) -> ApiError | None:
        if not host_header or not self.host_allowed(_hostname(host_header)):
            return ApiError(403, "PERMISSION_DENIED", f"Host '{host_header or ''}' is not allowed; "
                            f"add it to --allowed-hosts ({ALLOWED_HOSTS_ENV}) to serve it.")
        return None

    def check_origin(self, origin: str | None, host_header: str | None) -> ApiError | None:
        """A browser's Origin must name this service (same host and port); clients without one pass."""
        if origin is None:
            return None
        parts = urlsplit(origin)
        same = (origin != "null" and parts.scheme in ("http", "https") and host_header is not None
                and parts.netloc.lower() == host_header.strip().lower())
        if not same:
            return ApiError(403, "PERMISSION_DENIED", f"Cross-origin request from '{origin}' refused.")
        return None

    # --- token --------------------------------------------------------------------

    def check_token(self, authorization: str | None) -> ApiError | None:
        if self.token is None:
            return None
        if not authorization:
            return ApiError(401, "UNAUTHENTICATED", MISSING_CREDENTIALS)
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return ApiError(401, "UNAUTHENTICATED", INVALID_CREDENTIALS)
        return None

    def token_valid(self, given: object) -> bool:
        return self.token is not None and isinstance(given, str) and hmac.compare_digest(
            given.strip().encode(), self.token.encode())

    # --- the pages' session -------------------------------------------------------

    def session_value(self) -> str:
        """What the session cookie holds: derived from the token (never the token itself), so a restart
        with the same token keeps browsers logged in and a new token logs them out."""
        return hmac.new((self.token or "").encode(), b"ml-engine-ui-session", "sha256").hexdigest()

    def page_allowed(self, authorization: str | None, cookie: str | None) -> bool:
        """Pages need the token: in the Authorization header, or as the session cookie."""
        if self.token is None or (authorization and self.check_token(authorization) is None):
            return True
        given = _cookie(cookie, SESSION_COOKIE)
        return given is not None and hmac.compare_digest(given.encode(), self.session_value().encode())

    # --- CSRF for the HTML form ---------------------------------------------------

    def csrf_token(self, path: str) -> str:
        """A token bound to one page path, valid for this process's life."""
        return hmac.new(self.csrf_secret, path.encode(), "sha256").hexdigest()

    def csrf_valid(self, path: str, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given.encode(), self.csrf_token(path).encode())


def header(scope, name: bytes) -> str | None:
    """One request header (its last value), ``name`` in lower case as ASGI gives them."""
    found = None
    for key, value in scope["headers"]:
        if key == name:
            found = value
    return None if found is None else found.decode("latin-1")


def _cookie(header_value: str | None, name: str) -> str | None:
    for part in (header_value or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def check_json_body(method: str, content_type: str | None, body: bytes) -> ApiError | None:
    """POST/PATCH/PUT carry JSON or nothing: a body must say application/json (googleapiclient always
    does), and so must any Content-Type given, even on an empty body (an HTML form always sends one)."""
    if method not in BODY_METHODS or (not body and content_type is None):
        return None
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        return ApiError(400, "INVALID_ARGUMENT",
                        f"Content-Type '{content_type or ''}' is not supported; send application/json.")
    return None


class CallerCheck:
    """The Guard's checks for every HTTP request, as a pure ASGI middleware (no per-call task group).

    Host and Origin on everything but /healthz (Origin on /v1, /_local and every non-GET);
    the bearer token on /v1 and /_local; on pages the token or the session cookie, else a
    redirect to the login form.
    """

    def __init__(self, app, guard: Guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] != "/healthz":
            error = self._check(scope)
            if error is not None:
                await JSONResponse(error.body(), status_code=error.code)(scope, receive, send)
                return
            if is_page(scope["path"]) and scope["path"] not in OPEN_PAGES and not self.guard.page_allowed(
                    header(scope, b"authorization"), header(scope, b"cookie")):
                wanted = scope["path"] if scope["method"] == "GET" else "/ui"
                await RedirectResponse(f"/ui/login?{urlencode({'next': wanted})}", status_code=303)(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, scope) -> ApiError | None:
        host = header(scope, b"host")
        protected = scope["path"].startswith(PROTECTED_PREFIXES)
        error = self.guard.check_host(host)
        if error is None and (protected or scope["method"] != "GET"):
            error = self.guard.check_origin(header(scope, b"origin"), host)
        if error is None and protected:
            error = self.guard.check_token(header(scope, b"authorization"))
        return error
