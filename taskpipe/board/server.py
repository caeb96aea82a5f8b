"""The board's HTTP server: the standard library's WSGI server, one thread a request."""

from __future__ import annotations

import socketserver
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["ThreadingWSGIServer", "serve", "make_board_server"]


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """``wsgiref``'s server, answering each request in its own (daemon) thread."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    """Logs one line a request to stderr unless ``quiet``."""

    quiet = False

    def log_message(self, format: str, *args: Any) -> None:
        """Print the request line (not when quiet)."""
        if not self.quiet:
            super().log_message(format, *args)


def make_board_server(app: Any, host: str, port: int, *, quiet: bool = False) -> WSGIServer:
    """A threaded WSGI server for ``app`` bound to ``host:port`` (port 0: a free one)."""
    handler = type("Handler", (_QuietHandler,), {"quiet": quiet})
    return make_server(host, port, app, server_class=ThreadingWSGIServer, handler_class=handler)


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False) -> None:
    """Serve ``app`` on ``host:port`` until interrupted."""
    server = make_board_server(app, host, port, quiet=quiet)
    with server:
        server.serve_forever()
