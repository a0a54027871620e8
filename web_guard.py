"""What the web app refuses before Gradio sees a request (an ASGI middleware).

:class:`RequestGuard` sits inside Gradio's own middlewares (``launch(app_kwargs={"middleware":
[...]})``, see :func:`gradio_ui.launch_kwargs`) and answers, in this order:

- **403** for a request whose ``Origin`` is another web site (any page in a browser could
  otherwise POST files into the loopback app: CORS only hides the answer, the request still
  runs). Same origin = the ``Origin`` host and port equal the ``Host`` header's (or
  ``X-Forwarded-Host``'s), or an origin listed in ``UIConfig.allowed_origins``. Requests without
  an ``Origin`` (``gradio_client``, curl, a browser's own navigation) pass.
- **404** for a direct file request (``/gradio_api/file=<path>``) of anything below the output
  folder: job files (inputs, pairs, scenes) are never served by path. Results reach their own
  session only, as the copies Gradio makes in its cache under unguessable names.
- **411/413** for an upload without a ``Content-Length`` or over ``UIConfig.max_request_mb`` in
  all (Gradio's ``max_file_size`` bounds each file, not the request); nothing is written.
- **404** for an unknown API endpoint and **400** for a malformed request, logged as one line
  (Gradio lets these escape as a 500 with a traceback).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestGuard", "same_origin"]

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_FILE_MARKERS = ("/file=", "/file/")


def _host_port(netloc: str, scheme: str | None) -> tuple[str, int | None]:
    parts = urlsplit(f"//{netloc}")
    port = parts.port if parts.port is not None else _DEFAULT_PORTS.get(scheme or "", None)
    return (parts.hostname or "").lower(), port


def same_origin(origin: str, host: str | None, allowed: Sequence[str] = ()) -> bool:
    """Whether a request with this ``Origin`` comes from the app's own pages.

    >>> same_origin("http://127.0.0.1:7860", "127.0.0.1:7860"), same_origin("http://evil.example", "127.0.0.1:7860")
    (True, False)
    """
    if origin.rstrip("/") in {a.rstrip("/") for a in allowed}:
        return True
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc or not host:
        return False  # "null" (sandboxed frames, file:// pages) and garbage are foreign
    o_host, o_port = _host_port(parts.netloc, parts.scheme)
    h_host, h_port = _host_port(host, parts.scheme)
    return o_host == h_host and (o_port == h_port or h_port is None)


class RequestGuard:
    """ASGI middleware; see the module docstring. ``output_root``: the jobs' folder."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        output_root: str | Path,
        max_request_bytes: int,
        allowed_origins: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.output_root = os.path.realpath(output_root)
        self.max_request_bytes = int(max_request_bytes)
        self.allowed_origins = tuple(allowed_origins)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        origin = headers.get("origin")
        host = headers.get("x-forwarded-host") or headers.get("host")
        if origin is not None and not same_origin(origin, host, self.allowed_origins):
            return 403, f"cross-origin request refused (origin {origin})"
        path: str = scope.get("path", "")
        for marker in _FILE_MARKERS:
            if marker in path:
                target = path.split(marker, 1)[1]
                real = os.path.realpath(target)
                if real == self.output_root or real.startswith(self.output_root + os.sep):
                    return 404, "not found"
        if scope.get("method") == "POST" and path.rstrip("/").endswith("/upload"):
            length = headers.get("content-length")
            if length is None or not length.isdigit():
                return 411, "uploads need a Content-Length"
            if int(length) > self.max_request_bytes:
                limit = self.max_request_bytes / 1024 / 1024
                return 413, f"upload of {int(length) / 1024 / 1024:.1f} MB refused: at most {limit:g} MB per request"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = f"{scope.get('method')} {scope.get('path')}"
        refusal = self._refusal(scope, Headers(scope=scope))
        if refusal is not None:
            status, text = refusal
            logger.warning("%s: %d %s", where, status, text)
            await PlainTextResponse(text, status_code=status)(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # noqa: BLE001 - a request Gradio could not handle: one line, no traceback
            status, text = _classify(e, scope)
            logger.warning("%s: %d %s (%s: %s)", where, status, text, type(e).__name__, " ".join(str(e).split()))
            logger.debug("%s: traceback", where, exc_info=e)
            if not started:
                await PlainTextResponse(text, status_code=status)(scope, receive, send)


def _classify(exc: Exception, scope: Scope) -> tuple[int, str]:
    """(status, text) for an exception that escaped Gradio's routes."""
    path = scope.get("path", "")
    if type(exc).__name__ == "FnIndexInferError" or (isinstance(exc, KeyError) and path.endswith("/queue/join")):
        return 404, "unknown API endpoint"
    return 400, "malformed request"
