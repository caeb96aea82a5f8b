"""``taskpipe board``: a web page over a store's introspection, served by the package.

``make_app(storage_or_url, *, read_only=False, token=None)`` is a WSGI application (mount
it under a prefix in Flask or Django); ``serve(app, host, port)`` runs it with the
standard library's threaded WSGI server. The page (``static/``) reads only the JSON API
under ``api/`` (``taskpipe.board.api``).
"""

from __future__ import annotations

from .app import BoardApp, make_app
from .server import serve

__all__ = ["BoardApp", "make_app", "serve"]
