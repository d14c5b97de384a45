"""Per-request access to the region and a database session closed at request end."""

from __future__ import annotations

from flask import Flask, current_app, g, request
from sqlalchemy.orm import Session

from controller.region import Region


def region() -> Region:
    r: Region = current_app.extensions["vauban"]
    return r


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def db() -> Session:
    """The request's session; the handler commits, teardown closes (rolling back the rest).

    A GET reads in a read session, which never waits for a writer."""
    if "db" not in g:
        r = region()
        g.db = r.reads() if request.method in READ_METHODS else r.sessions()
    session: Session = g.db
    return session


def install_session_teardown(app: Flask) -> None:
    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        session = g.pop("db", None)
        if session is not None:
            session.close()
