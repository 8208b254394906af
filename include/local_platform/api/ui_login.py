"""Logging a browser in to the pages: the token, once, for an HttpOnly, SameSite=Strict session cookie.

``make services`` and ``make airflow`` print a link ``/ui/login?token=...``: opening it
sets the cookie and redirects to the page asked for, so the token leaves the address bar
at once. The form at ``/ui/login`` takes the token by POST (same origin only, as every
non-GET). ``next`` is only ever a page of this service, never another site.
"""

from __future__ import annotations

import html
import logging
import re

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from include.local_platform.api.security import SESSION_COOKIE, Guard

log = logging.getLogger("local_platform")
_PAGE = re.compile(r"^/(ui(/[A-Za-z0-9_.\-/]*)?)?$")
MAX_FORM_BYTES = 8192


def _next_page(wanted: object) -> str:
    return wanted if isinstance(wanted, str) and _PAGE.match(wanted) and "//" not in wanted else "/ui"


def _form(next_page: str, message: str = "") -> str:
    note = f"<p style='color:#b00'>{html.escape(message)}</p>" if message else ""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Log in</title></head><body>"
            "<h1>Local ml/v1 service</h1><p>Paste the service's token (<code>.state/ml_engine_token</code>, "
            f"or the link <code>make services</code> prints).</p>{note}<form method='post' action='/ui/login'>"
            f"<input type='hidden' name='next' value='{html.escape(next_page)}'>"
            "<input type='password' name='token' autocomplete='current-password' size='50' autofocus> "
            "<button type='submit'>Log in</button></form></body></html>")


def _logged_in(guard: Guard, next_page: str) -> Response:
    response = RedirectResponse(next_page, status_code=303)
    response.set_cookie(SESSION_COOKIE, guard.session_value(), httponly=True, samesite="strict", path="/")
    return response


def add_routes(app: FastAPI, guard: Guard) -> None:
    """``/ui/login`` (GET: the form, or ``?token=`` from the printed link; POST: the form) and ``/ui/logout``."""

    @app.get("/ui/login")
    def _login_page(request: Request) -> Response:
        next_page = _next_page(request.query_params.get("next"))
        if guard.token is None:
            return RedirectResponse(next_page, status_code=303)
        if "token" not in request.query_params:
            return HTMLResponse(_form(next_page))
        if guard.token_valid(request.query_params["token"]):
            return _logged_in(guard, next_page)
        log.warning("page login refused: wrong token")
        return HTMLResponse(_form(next_page, "That is not the service's token."), status_code=401)

    @app.post("/ui/login")
    async def _login(request: Request) -> Response:
        if int(request.headers.get("content-length") or MAX_FORM_BYTES + 1) > MAX_FORM_BYTES:
            return HTMLResponse(_form("/ui", "The form is too large."), status_code=413)
        form = await request.form(max_files=0, max_fields=4)
        next_page = _next_page(form.get("next"))
        if guard.token is None or guard.token_valid(form.get("token")):
            return _logged_in(guard, next_page)
        log.warning("page login refused: wrong token")
        return HTMLResponse(_form(next_page, "That is not the service's token."), status_code=401)

    @app.get("/ui/logout")
    def _logout() -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response
