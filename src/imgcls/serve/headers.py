"""Security headers on every response of the server, and the Content-Security-Policy of each kind of page.

Every response gets ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``
and a ``Content-Security-Policy``:

- the web page at ``/`` (:func:`page_csp`): its one inline ``<script>`` and one inline ``<style>`` allowed by their
  SHA-256 hashes (no ``'unsafe-inline'``), images from ``blob:`` (the preview of the chosen file) and ``data:`` (the
  Grad-CAM overlay), ``fetch`` to the server itself, nothing else;
- FastAPI's ``/docs`` and ``/redoc`` pages (:data:`DOCS_CSP`): they load Swagger UI / ReDoc from FastAPI's CDN and
  start them with an inline script, so ``'unsafe-inline'`` and that CDN, for those pages only (``docs=False`` turns
  them off);
- the Gradio UI under ``/ui`` gets no CSP (Gradio's page has its own inline scripts and assets); the other headers
  still apply;
- everything else (JSON answers, errors): ``default-src 'none'; frame-ancestors 'none'``.

An exception that escapes a route is answered here as a JSON 500 (logged with its traceback), so that answer has the
headers too; Starlette's own last-resort handler sits outside every middleware and would send it without them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from typing import Any

from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
#: FastAPI's Swagger UI and ReDoc pages: assets from cdn.jsdelivr.net, an inline start-up script, the FastAPI logo
DOCS_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")
UI_PREFIX = "/ui"


def _hashes(html: str, tag: str) -> list[str]:
    """CSP source expressions ('sha256-...') for the inline ``<tag>`` elements (no src attribute) of ``html``."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies]


def page_csp(html: str) -> str:
    """The CSP of the web page ``html``: its inline scripts and styles by hash, images from blob: and data:, fetch
    to the same origin only."""
    scripts = " ".join(_hashes(html, "script")) or "'none'"
    styles = " ".join(_hashes(html, "style")) or "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class SecurityHeadersMiddleware:
    """Adds :data:`COMMON_HEADERS` and the CSP for the path to every HTTP response (see the module docstring).

    Args:
        app: the ASGI app.
        page_policies: CSP by exact path, for HTML pages the app serves itself (``{"/": page_csp(html)}``).
    """

    def __init__(self, app: Any, page_policies: dict[str, str]) -> None:
        self.app, self.page_policies = app, page_policies

    def policy(self, path: str) -> str | None:
        if path in self.page_policies:
            return self.page_policies[path]
        if path == UI_PREFIX or path.startswith(UI_PREFIX + "/"):
            return None
        if any(path == p or path.startswith(p + "/") for p in DOCS_PATHS):
            return DOCS_CSP
        return API_CSP

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [(k.encode(), v.encode()) for k, v in COMMON_HEADERS.items()]
        csp = self.policy(scope.get("path", ""))
        if csp is not None:
            extra.append((b"content-security-policy", csp.encode()))
        started = False

        async def send_with_headers(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in names)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for a clean answer: the server closes the connection
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
            await response(scope, receive, send_with_headers)
