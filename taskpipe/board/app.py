"""The board's WSGI application: routing, the token, CSRF, security headers, errors.

Safety rules, enforced here for every request:

- with a ``token``, every request carries it: an ``Authorization: Bearer`` header, or
  the cookie set when the page is opened once as ``/?token=…`` (HttpOnly, SameSite);
- ``GET`` never changes anything; actions are ``POST`` with the page's CSRF token in
  an ``X-CSRF-Token`` header (a page of another site can neither read nor send it),
  or with the token in an ``Authorization: Bearer`` header (a script's);
- ``read_only`` refuses every action (403) and the page hides them;
- a Content-Security-Policy that allows scripts and styles from the board only (no
  inline script), and no framing;
- a bad request gets a 4xx with ``{"error": …}``; an unexpected failure a 500 with a
  one-line message (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

from ..errors import CapabilityError, RunNotFound, TaskNotFound
from ..store import require
from .api import ApiError, BoardApi, checked_id

__all__ = ["BoardApp", "make_app", "loopback_hosts_only", "CSP", "MAX_BODY"]

log = logging.getLogger("taskpipe.board")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
MAX_BODY = 1 << 20  # bytes of a pushed task's JSON body
COOKIE = "taskpipe_board_token"
STATIC = {
    "board.js": "text/javascript; charset=utf-8",
    "board.css": "text/css; charset=utf-8",
}
_STATUS_TEXT = {
    200: "200 OK",
    302: "302 Found",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    413: "413 Content Too Large",
    415: "415 Unsupported Media Type",
    500: "500 Internal Server Error",
}
StartResponse = Callable[..., Any]


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class BoardApp:
    """The WSGI application (see the module docstring); made by ``make_app``."""

    def __init__(
        self, store: Any, *, read_only: bool = False, token: str | None = None, streams: Any = ()
    ):
        require(store, "introspection", "be shown on the board")
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ValueError("the board's token is a string of at least 8 characters")
        self.api = BoardApi(store, streams=streams)
        self.read_only = read_only
        self.token = token
        # with a token, the CSRF token is derived from it: every process of a WSGI
        # server then accepts the page another one served
        self.csrf = (
            secrets.token_urlsafe(32)
            if token is None
            else hmac.new(token.encode(), b"taskpipe-board-csrf", hashlib.sha256).hexdigest()
        )
        # a queue's name may hold a "/" (the server decodes the page's %2F): the action
        # is the path's last part, the queue all between
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"/api/overview"), lambda env: self.api.overview()),
            ("GET", re.compile(r"/api/tasks"), lambda env: self.api.tasks(_query(env))),
            ("GET", re.compile(r"/api/tasks/(\d+)"), lambda env, i: self.api.task(checked_id(i))),
            ("GET", re.compile(r"/api/schedules"), lambda env: self.api.schedules()),
            ("GET", re.compile(r"/api/runs"), lambda env: self.api.runs(_query(env))),
            ("GET", re.compile(r"/api/runs/([^/]+)"), lambda env, r: self.api.run(r)),
            (
                "POST",
                re.compile(r"/api/tasks/(\d+)/(retry|kill|delete)"),
                lambda env, i, a: self.api.act(checked_id(i), a),
            ),
            (
                "POST",
                re.compile(r"/api/queues/(.+)/tasks"),
                lambda env, q: self.api.push(q, _json_body(env)),
            ),
            (
                "POST",
                re.compile(r"/api/queues/(.+)/retry-dead"),
                lambda env, q: self.api.retry_dead(q),
            ),
            (
                "POST",
                re.compile(r"/api/queues/(.+)/(pause|resume)"),
                lambda env, q, a: self.api.pause(q, a == "pause"),
            ),
        ]

    # WSGI ----------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request."""
        try:
            return self._answer(environ, start_response)
        except ApiError as exc:
            return self._json(start_response, exc.status, {"error": exc.message})
        except Exception:
            log.exception(
                "taskpipe board: %s %s failed", environ.get("REQUEST_METHOD"), _path(environ)
            )
            return self._json(
                start_response, 500, {"error": "internal error (see the board's log)"}
            )
        finally:
            # the answer is built whole: the thread's connections are not needed after it
            # (the board's server runs each request on a new thread, which would leave
            # one open per request until the garbage collector found it)
            self.api.close_thread_connections()

    def _answer(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = _path(environ)
        if self.token is not None:
            opened = self._open_with_token(environ, start_response, method, path)
            if opened is not None:
                return opened
            if not self._authorized(environ):
                raise ApiError(401, "this board needs its token: open it as /?token=…")
        if path in ("", "/"):
            if method != "GET":
                raise ApiError(405, "the page is read with GET")
            return self._page(environ, start_response, path)
        if path.startswith("/static/"):
            name = path[len("/static/") :]
            if method != "GET" or name not in STATIC:
                raise ApiError(404, "no such file")
            return self._send(start_response, 200, STATIC[name], _static(name), cache=True)
        return self._api(environ, start_response, method, path)

    def _api(
        self, environ: dict[str, Any], start_response: StartResponse, method: str, path: str
    ) -> Iterable[bytes]:
        allowed = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            if method == "POST":
                self._check_action(environ)
            try:
                result = handler(environ, *match.groups())
            except TaskNotFound as exc:
                raise ApiError(404, str(exc)) from None
            except RunNotFound as exc:
                raise ApiError(404, str(exc)) from None
            except CapabilityError as exc:
                raise ApiError(409, str(exc)) from None
            except (ValueError, TypeError) as exc:
                raise ApiError(400, str(exc)[:300]) from None
            return self._json(start_response, 200, result)
        if allowed:
            raise ApiError(405, f"{method} is not allowed here (use {', '.join(allowed)})")
        raise ApiError(404, "no such page or API call")

    # Safety ---------------------------------------------------------------------------------
    def _open_with_token(
        self, environ: dict[str, Any], start_response: StartResponse, method: str, path: str
    ) -> Iterable[bytes] | None:
        """``GET /?token=T`` with the right token: set the cookie and redirect to the page
        (the token leaves the address bar and the history)."""
        if method != "GET" or path not in ("", "/"):
            return None
        given = _query(environ).get("token")
        if given is None or not self._same(given):
            return None
        cookie = f"{self._cookie_name()}={self._cookie_value()}; HttpOnly; SameSite=Strict; Path=/"
        location = environ.get("SCRIPT_NAME", "") + "/"
        start_response(
            _STATUS_TEXT[302],
            [("Location", location), ("Set-Cookie", cookie), *_headers("text/plain", cache=False)],
        )
        return [b""]

    def _cookie_name(self) -> str:
        # one name per token: a browser keeps cookies by host, not port, and two boards
        # on one machine must not overwrite each other's
        assert self.token is not None
        tag = hashlib.sha256(("taskpipe-board-cookie:" + self.token).encode()).hexdigest()
        return f"{COOKIE}_{tag[:12]}"

    def _cookie_value(self) -> str:
        # the cookie holds a digest of the token, not the token itself
        assert self.token is not None
        return hashlib.sha256(("taskpipe-board:" + self.token).encode()).hexdigest()

    def _same(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _bearer(self, environ: dict[str, Any]) -> bool:
        """Whether the request carries the token in an ``Authorization: Bearer`` header
        (a script's: a browser never adds that header by itself)."""
        header = environ.get("HTTP_AUTHORIZATION", "")
        return (
            self.token is not None
            and header.startswith("Bearer ")
            and self._same(header[len("Bearer ") :].strip())
        )

    def _authorized(self, environ: dict[str, Any]) -> bool:
        if self._bearer(environ):
            return True
        for part in environ.get("HTTP_COOKIE", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self._cookie_name() and hmac.compare_digest(
                value.encode(), self._cookie_value().encode()
            ):
                return True
        return False

    def _check_action(self, environ: dict[str, Any]) -> None:
        if self.read_only:
            raise ApiError(403, "this board is read-only")
        if self._bearer(environ):
            return  # no forgery: another site's page cannot send the token
        given = environ.get("HTTP_X_CSRF_TOKEN", "")
        if not given or not hmac.compare_digest(given.encode(), self.csrf.encode()):
            raise ApiError(403, "missing or wrong CSRF token (reload the page)")
        origin = environ.get("HTTP_ORIGIN")
        host = environ.get("HTTP_HOST")
        if origin and host and origin.split("://", 1)[-1] != host:
            raise ApiError(403, "a request from another origin")

    # Responses ------------------------------------------------------------------------------
    def _page(
        self, environ: dict[str, Any], start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        if path == "" and environ.get("SCRIPT_NAME"):
            # mounted under a prefix and asked without the slash: relative links need it
            start_response(
                _STATUS_TEXT[302],
                [("Location", environ["SCRIPT_NAME"] + "/"), *_headers("text/plain", cache=False)],
            )
            return [b""]
        page = _static("index.html").decode()
        page = page.replace("{{csrf}}", html.escape(self.csrf, quote=True))
        page = page.replace("{{read_only}}", "1" if self.read_only else "0")
        return self._send(start_response, 200, "text/html; charset=utf-8", page.encode())

    def _json(self, start_response: StartResponse, status: int, value: Any) -> Iterable[bytes]:
        body = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str).encode()
        return self._send(start_response, status, "application/json; charset=utf-8", body)

    @staticmethod
    def _send(
        start_response: StartResponse,
        status: int,
        content_type: str,
        body: bytes,
        *,
        cache: bool = False,
    ) -> Iterable[bytes]:
        headers = [*_headers(content_type, cache=cache), ("Content-Length", str(len(body)))]
        start_response(_STATUS_TEXT.get(status, f"{status} Error"), headers)
        return [body]


def _headers(content_type: str, *, cache: bool) -> list[tuple[str, str]]:
    return [
        ("Content-Type", content_type),
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "max-age=300" if cache else "no-store"),
    ]


def _path(environ: dict[str, Any]) -> str:
    raw = environ.get("PATH_INFO", "")
    # PEP 3333: PATH_INFO is bytes as latin-1; taskpipe's names are UTF-8
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ApiError(400, "the path is not UTF-8") from None


def _query(environ: dict[str, Any]) -> dict[str, str]:
    try:
        pairs = parse_qsl(environ.get("QUERY_STRING", ""), errors="strict")
    except (UnicodeError, ValueError):
        raise ApiError(400, "the query string is not UTF-8") from None
    return dict(pairs)


def _json_body(environ: dict[str, Any]) -> Any:
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "send the task as JSON (Content-Type: application/json)")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, "a bad Content-Length") from None
    if length <= 0:
        raise ApiError(400, "an empty body: send a JSON object")
    if length > MAX_BODY:
        raise ApiError(413, f"the body is over {MAX_BODY} bytes")
    raw = environ["wsgi.input"].read(length)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeError, ValueError) as exc:
        raise ApiError(400, f"the body is not JSON: {str(exc)[:100]}") from None


def loopback_hosts_only(app: Any) -> Callable[..., Iterable[bytes]]:
    """``app`` answering only requests whose ``Host`` names this machine (``localhost``,
    ``127.x.x.x``, ``[::1]``): what a board without a token on 127.0.0.1 needs, so that a
    page of another site whose DNS name points at 127.0.0.1 (DNS rebinding) can neither
    read the page's CSRF token nor act."""

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if _loopback_name(environ.get("HTTP_HOST", "")):
            result: Iterable[bytes] = app(environ, start_response)
            return result
        body = json.dumps({"error": "this board answers to localhost only"}).encode()
        return BoardApp._send(start_response, 403, "application/json; charset=utf-8", body)

    return guarded


def _loopback_name(host: str) -> bool:
    """True for a ``Host`` header (port included or not) naming a loopback address."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    else:
        name = name.rpartition(":")[0] if name.count(":") == 1 else name
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def make_app(
    storage_or_url: Any,
    *,
    read_only: bool = False,
    token: str | None = None,
    streams: Any = (),
) -> BoardApp:
    """The board as a WSGI application over a store (one that declares
    ``introspection``), or over the URL or path of one (``taskpipe.open_storage``).

    ``read_only`` refuses and hides every action; ``token`` makes every request need it;
    ``streams`` (``CronStream`` objects) let the board tell their next tick exactly.
    """
    store = storage_or_url
    if isinstance(storage_or_url, str):
        from ..connection import open_storage

        store = open_storage(storage_or_url)
    return BoardApp(store, read_only=read_only, token=token, streams=streams)
