"""Security headers on every answer of the controller, errors included.

The API answers JSON and files, never pages to render: a browser is told not to sniff
another type, not to frame it, not to send it on as a referrer, not to keep it in a
shared cache, and to reach this host over HTTPS only. The web UI will loosen
Content-Security-Policy for its own pages where it must, nowhere else.
"""

from __future__ import annotations

from flask import Flask, Response

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    # answers carry tokens, keys and tenants' state: no cache keeps them
    "Cache-Control": "no-store",
}


def install_security_headers(app: Flask) -> None:
    @app.after_request
    def _secure(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
