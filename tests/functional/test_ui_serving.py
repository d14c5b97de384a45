"""The controller serves its web UI: the page, its files, under a strict policy."""

from __future__ import annotations

import json
from pathlib import Path

from flask.testing import FlaskClient

STATIC = Path(__file__).resolve().parents[2] / "controller" / "ui" / "static"


def test_the_page_is_served_at_the_root_with_a_policy_that_allows_only_this_origin(
        client: FlaskClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    assert b'<script type="module" src="/ui/app.js">' in r.data
    csp = dict(part.strip().split(" ", 1) for part in
               r.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"  # no inline script, no other origin
    assert csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert r.headers["X-Frame-Options"] == "DENY"


def test_every_file_of_the_ui_is_served_with_its_type(client: FlaskClient) -> None:
    manifest = json.loads((STATIC / "vendor" / "MANIFEST.json").read_text())
    for name in ["app.js", "style.css", "lib/api.js", "vendor/htm-preact.js",
                 "vendor/icons.svg", *[f"vendor/{f}" for f in manifest["files"]][:5]]:
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200, name
        assert r.data == (STATIC / name).read_bytes()
    assert client.get("/ui/app.js").mimetype == "text/javascript"
    assert client.get("/ui/vendor/fonts/ibm-plex-sans-400.woff2").mimetype == "font/woff2"


def test_a_file_is_revalidated_by_its_etag(client: FlaskClient) -> None:
    first = client.get("/ui/app.js")
    assert first.headers["Cache-Control"] == "no-cache"
    again = client.get("/ui/app.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304


def test_nothing_outside_the_ui_folder_is_served(client: FlaskClient) -> None:
    for path in ["/ui/../serve.py", "/ui/..%2fserve.py", "/ui/%2e%2e/serve.py",
                 "/ui/vendor/../../serve.py", "/ui/nothing.js", "/ui/vendor/licenses/htm.txt",
                 "/ui/vendor",
                 # a NUL and an overlong name gave 500s when a path was built from them
                 "/ui/a%00.js", "/ui/" + "a" * 300 + ".js"]:
        assert client.get(path).status_code == 404, path
