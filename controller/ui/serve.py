"""Serving the web UI: its page at `/` and its files under `/ui/`.

The UI is a client of the REST API (`/api/v1`, by session cookie); these routes serve
only its own static files, which hold no secret and need no login. Everything the browser
loads comes from here (vendored by `make ui-vendor`): the Content-Security-Policy lets a
page load scripts, styles, fonts and images from this origin only (styles may also be
inline: see UI_CSP), connect only back to it (the API, its event stream and console
websockets), and be framed by no one. A file
is revalidated at each load (ETag), so an upgraded controller's UI is never mixed with a
cached older one.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, abort, request

STATIC = Path(__file__).resolve().parent / "static"

UI_CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    # xterm.js (the serial console) writes its theme and cell sizes as <style> elements;
    # scripts stay 'self' only, which is what keeps injected markup from running
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
# the API reference (Redoc, vendored): as the UI, and Redoc's search index runs in a web
# worker it starts from a blob: URL; styled-components writes its styles inline
DOCS_CSP = UI_CSP.replace("connect-src 'self'", "connect-src 'self'; worker-src blob:")
MIME_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
              ".woff2": "font/woff2", ".svg": "image/svg+xml", ".json": "application/json",
              ".html": "text/html", ".png": "image/png"}

ui = Blueprint("ui", __name__)


def _servable(static: Path) -> dict[str, Path]:
    """Every file the UI may serve, by its path below `static`: the only names a request
    can reach (no path is built from what a client sends)."""
    return {p.relative_to(static).as_posix(): p for p in sorted(static.rglob("*"))
            if p.is_file() and p.suffix in MIME_TYPES}


SERVABLE = _servable(STATIC)


def _serve(relative: str, csp: str = UI_CSP) -> Response:
    path = SERVABLE.get(relative)
    if path is None:
        abort(404)
    # the UI's files are small (the largest, the API reference's Redoc, ~2 MiB): read whole
    response = Response(path.read_bytes(), mimetype=MIME_TYPES[path.suffix])
    response.add_etag()
    response.make_conditional(request)
    response.headers["Content-Security-Policy"] = csp
    response.headers["Cache-Control"] = "no-cache"
    return response


@ui.get("/")
def index() -> Response:
    return _serve("index.html")


@ui.get("/api/v1/docs")
def api_reference() -> Response:
    """The API reference: Redoc rendering /api/v1/openapi.json, every file from here."""
    return _serve("api-docs.html", DOCS_CSP)


@ui.get("/ui/<path:relative>")
def static_file(relative: str) -> Response:
    return _serve(relative)


def install_ui(app: Flask) -> None:
    app.register_blueprint(ui)
