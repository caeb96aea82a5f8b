"""The store contract suite: every test runs once per store, through ``store_factory``.

Params: ``memory`` and ``sqlite`` always; ``postgres``, ``mysql`` and ``redis`` when
their URL is in the environment (``TASKPIPE_TEST_POSTGRES_URL``,
``TASKPIPE_TEST_MYSQL_URL``, ``TASKPIPE_TEST_REDIS_URL``). An engine param is skipped,
with the reason, when its URL is unset, or when its module (``taskpipe.postgres``…)
does not exist yet. A skip must never hide a failure in CI: when ``CI`` is set and
the URL is set, a missing module fails the test instead of skipping it.

Every store is made with a queue name unique to the test. An engine store is opened
with ``taskpipe.open_storage(url, queue=…, codec=…)`` and set up with
``type(store).setup(store)`` (as ``SqlStorage.setup`` accepts a store), so a new
engine joins the suite by providing those two and nothing else.

Capabilities are checked with ``contract_support.need(store, "…")``, never by param
name: a store that does not declare a capability skips its tests with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import ENGINES, engine_url, module_exists

import taskpipe
from taskpipe.memory import MemoryBackend
from taskpipe.sqlite import SqliteStorage, connect
from taskpipe.store import Store

StoreFactory = Callable[..., Store]

#: Contract violations found by this suite and not fixed yet, by (test, param): each
#: such test is marked ``xfail(strict=True)`` for that store only, so that the report
#: shows it and a fix makes the suite say so (XPASS fails). Remove an entry with its fix.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the known contract violations (``KNOWN_VIOLATIONS``) as strict xfails."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("store_factory") if callspec else None
        reason = KNOWN_VIOLATIONS.get((getattr(item, "originalname", item.name), param))
        if reason is not None:
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"contract violation: {reason}"))


def unique_queue() -> str:
    """A queue name no other test uses (engines share one database between tests)."""
    return f"contract-{uuid.uuid4().hex[:12]}"


def _params() -> list[str]:
    """memory and SQLite always; an engine once its module exists (a test run with its
    URL variable set but no module yet fails at collection, below)."""
    shipped = [name for name, (_, module) in ENGINES.items() if module_exists(module)]
    for name, (variable, module) in ENGINES.items():
        if os.environ.get(variable, "").strip() and name not in shipped and os.environ.get("CI"):
            raise pytest.UsageError(
                f"{variable} is set but {module} does not exist (CI: not skipping)"
            )
    return ["memory", "sqlite", *shipped]


@pytest.fixture(params=_params())
def store_factory(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[StoreFactory]:
    """``make(queue=None, codec=None) -> Store``: a fresh store of this param's kind,
    on a queue unique to the test (unless ``queue`` is given). SQLite stores of one
    test share one database file in ``tmp_path``; memory stores share nothing."""
    kind = request.param
    cleanups: list[Callable[[], None]] = []

    if kind == "memory":

        def make(queue: str | None = None, codec: Any = None) -> Store:
            return MemoryBackend(queue=queue or unique_queue(), codec=codec)

    elif kind == "sqlite":
        db = connect(str(tmp_path / "contract.db"))
        SqliteStorage.setup(db)
        cleanups.append(lambda: db.is_closed() or db.close())

        def make(queue: str | None = None, codec: Any = None) -> Store:
            return SqliteStorage(db, queue=queue or unique_queue(), codec=codec)

    else:
        url = engine_url(kind)
        if kind == "redis":  # a key prefix of the test's own, its keys deleted after it
            url += ("&" if "?" in url else "?") + f"prefix=tp-contract-{uuid.uuid4().hex[:12]}"

        def make(queue: str | None = None, codec: Any = None) -> Store:
            store = taskpipe.open_storage(url, queue=queue or unique_queue(), codec=codec)
            type(store).setup(store)
            close = getattr(store, "close_thread_connection", None)
            if close is not None:
                cleanups.append(close)
            drop = getattr(store, "drop", None)
            if kind == "redis" and drop is not None:
                cleanups.append(store.close)  # after drop: its client's pooled sockets
                cleanups.append(drop)
            return store

    yield make
    for cleanup in reversed(cleanups):
        cleanup()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    """One fresh store (its own queue) of the param's kind."""
    return store_factory()
