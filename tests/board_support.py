"""A tiny WSGI client for the board's tests: builds an environ, calls the app."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any
from wsgiref.util import setup_testing_defaults


@dataclass
class Response:
    """What the app answered."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The body as JSON (the test fails if it is not)."""
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.body.decode()


def call(
    app: Any,
    method: str,
    path: str,
    *,
    query: str = "",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    script_name: str = "",
) -> Response:
    """Send one request to ``app``; ``headers`` by their HTTP names."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path.encode().decode("latin-1"),
        "SCRIPT_NAME": script_name,
        "QUERY_STRING": query,
        "wsgi.input": io.BytesIO(body or b""),
        "CONTENT_LENGTH": str(len(body)) if body is not None else "",
    }
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ[f"HTTP_{key}"] = value
    setup_testing_defaults(environ)
    started: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        started["status"] = int(status.split()[0])
        started["headers"] = dict(response_headers)

    chunks = app(environ, start_response)
    return Response(started["status"], started["headers"], b"".join(chunks))


def csrf_of(app: Any) -> dict[str, str]:
    """The CSRF header the page of ``app`` carries (read from the page itself)."""
    page = call(app, "GET", "/").text
    token = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    return {"X-CSRF-Token": token}


def post(app: Any, path: str, payload: Any = None, **kwargs: Any) -> Response:
    """POST ``payload`` (JSON) to ``path`` with the page's CSRF token."""
    headers = {**csrf_of(app), **kwargs.pop("headers", {})}
    body = None
    if payload is not None:
        body = json.dumps(payload).encode()
        headers.setdefault("Content-Type", "application/json")
    return call(app, "POST", path, body=body, headers=headers, **kwargs)
