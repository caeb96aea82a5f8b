"""The PostgreSQL contenders: taskpipe, raw psycopg (the ceiling) and the peers
Procrastinate and pgqueuer, each as its documentation shows it, at its defaults.

Every contender offers the same operations: ``setup(url)`` (tables in a fresh place),
``push_single(url, n)``, ``push_bulk(url, n)`` (rows/s), ``fill(url, n)`` (untimed
no-op tasks for a drain), and, in a child process (``pg_child.py``), ``drain(url)``
(returns how many it handled) and ``listen(url, record)`` (an idle worker whose
handler calls ``record(pushed_at)``); ``producer(url)`` is the matching push for the
latency runs. taskpipe and raw work in a fresh schema of one benchmark database; each
peer repetition gets a database of its own (their schemas are not relocatable).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec
import psycopg

from taskpipe.sql.postgres import (
    _COLUMNS,
    ACK_DONE_MANY,
    CHANNEL,
    JOBS,
    PostgresDialect,
    _reorder_claim_params,
)

Q = PostgresDialect.queries
PREFIX = "tp_bench_"  # every database and schema these benchmarks create starts so


# Places ------------------------------------------------------------------------------------
def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (same host, user and options)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` first."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-c search_path={schema}')}"


@contextmanager
def fresh_database(base: str) -> Iterator[str]:
    """A new database (created here, dropped afterwards); yields its URL."""
    name = f"{PREFIX}{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield with_database(base, name)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def fresh_schema(base: str) -> Iterator[str]:
    """A new schema in ``base``'s database (created here, dropped afterwards); yields a
    URL whose search_path is that schema."""
    name = f"{PREFIX}{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield with_search_path(base, name)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


def claim_params(lease: str, worker: str, now: float, limit: int) -> tuple:
    """The parameters of taskpipe's claim (``claim_guarded``) for queue "default"."""
    return tuple(_reorder_claim_params((lease, worker, now, "default", now, "default", now, limit)))


def raw_ack(
    conn: psycopg.Connection, rows: list, lease: str, done_at: float, sql: str = ACK_DONE_MANY
) -> None:
    """taskpipe's ack of a batch of Done outcomes: one autocommit statement."""
    conn.execute(
        sql, (done_at, [r[0] for r in rows], [lease] * len(rows), [None] * len(rows))
    ).fetchall()


def _row(i: int, now: float) -> tuple:
    return (None, "default", msgspec.json.encode(i), 0, now, None, None, None, now)


# taskpipe ----------------------------------------------------------------------------------
class Taskpipe:
    name = "taskpipe"
    own_database = False

    @staticmethod
    def setup(url: str) -> None:
        from taskpipe.postgres import PostgresStorage, connect

        db = connect(url)
        PostgresStorage.setup(db)
        db.close()

    @staticmethod
    def storage(url: str, **config):
        from taskpipe import Config
        from taskpipe.postgres import PostgresStorage, connect

        storage = PostgresStorage(connect(url), config=Config(**config) if config else None)
        storage.db.connect()  # connected before any clock starts, as every contender
        return storage

    @classmethod
    def push_single(cls, url: str, n: int) -> float:
        storage = cls.storage(url)
        push = storage.push
        start = time.perf_counter()
        for i in range(n):
            push(i)
        elapsed = time.perf_counter() - start
        storage.db.close()
        return n / elapsed

    @classmethod
    def push_bulk(cls, url: str, n: int) -> float:
        storage = cls.storage(url)
        items = list(range(n))
        start = time.perf_counter()
        storage.push_bulk(items)
        elapsed = time.perf_counter() - start
        storage.db.close()
        return n / elapsed

    fill = staticmethod(lambda url, n: Raw.fill(url, n))

    @classmethod
    def drain(cls, url: str, go: Callable[[], None]) -> int:
        from taskpipe import WorkerBuilder

        storage = cls.storage(url)
        worker = WorkerBuilder("bench").backend(storage).concurrency(4).build(_noop)
        go()
        return worker.run_until_idle()

    @classmethod
    def listen(cls, url: str, record: Callable[[float], None], ready: Callable[[], None]) -> None:
        from taskpipe import WorkerBuilder

        # a 30 s poll: only the NOTIFY can wake it within the measurement
        storage = cls.storage(url, poll_interval=30.0)
        worker = WorkerBuilder("latency").backend(storage).shutdown_grace(1).build(record)
        ready()
        worker.run()

    @classmethod
    @contextmanager
    def producer(cls, url: str) -> Iterator[Callable[[float], None]]:
        storage = cls.storage(url)
        yield storage.push
        storage.db.close()


def _noop(item: int) -> None:
    return None


# raw psycopg: taskpipe's own statements with nothing around them -------------------------------
class Raw:
    name = "raw psycopg"
    own_database = False
    setup = Taskpipe.setup
    push_sql = f"WITH ins AS ({Q.insert}) SELECT ins.id, pg_notify('{CHANNEL}', %s) FROM ins"

    @classmethod
    def push_single(cls, url: str, n: int) -> float:
        with psycopg.connect(url, autocommit=True) as conn:
            start = time.perf_counter()
            for i in range(n):
                conn.execute(cls.push_sql, (*_row(i, time.time()), "default")).fetchone()
            return n / (time.perf_counter() - start)

    @classmethod
    def push_bulk(cls, url: str, n: int) -> float:
        with psycopg.connect(url, autocommit=True) as conn:
            start = time.perf_counter()
            with conn.transaction():
                _copy(conn, n)
            return n / (time.perf_counter() - start)

    @staticmethod
    def fill(url: str, n: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            _copy(conn, n)

    @staticmethod
    def drain(url: str, go: Callable[[], None], batch: int = 32) -> int:
        """Claim 32 (the CTE), run them on a pool of 4, one executemany ack per batch."""
        pool = ThreadPoolExecutor(4)
        handled = 0
        with psycopg.connect(url, autocommit=True) as conn:
            worker = f"raw:{uuid.uuid4().hex[:8]}"
            go()
            lease_no = 0
            while True:
                now = time.time()
                lease_no += 1
                lease = f"{worker}:{lease_no}"
                params = claim_params(lease, worker, now, batch)
                rows = conn.execute(Q.claim_guarded, params).fetchall()
                if not rows:
                    break
                wait([pool.submit(msgspec.json.decode, row[1]) for row in rows])
                done_at = time.time()
                raw_ack(conn, rows, lease, done_at)
                handled += len(rows)
        pool.shutdown()
        return handled

    @staticmethod
    def listen(url: str, record: Callable[[float], None], ready: Callable[[], None]) -> None:
        """A LISTEN connection woken by NOTIFY, then the raw claim; the "handler" is
        ``record`` called with the decoded payload."""
        listener = psycopg.connect(url, autocommit=True)
        listener.execute(f"LISTEN {CHANNEL}")
        conn = psycopg.connect(url, autocommit=True)
        ready()
        lease_no = 0
        while True:
            for _ in listener.notifies(timeout=30.0):
                while True:
                    now = time.time()
                    lease_no += 1
                    lease = f"raw:{lease_no}"
                    params = claim_params(lease, "raw", now, 32)
                    rows = conn.execute(Q.claim_guarded, params).fetchall()
                    if not rows:
                        break
                    for row in rows:
                        record(msgspec.json.decode(row[1]))
                    raw_ack(conn, rows, lease, time.time())

    @classmethod
    @contextmanager
    def producer(cls, url: str) -> Iterator[Callable[[float], None]]:
        conn = psycopg.connect(url, autocommit=True)

        def push(value: float) -> None:
            conn.execute(cls.push_sql, (*_row(value, time.time()), "default")).fetchone()  # type: ignore[arg-type]

        yield push
        conn.close()


def _copy(conn: psycopg.Connection, n: int) -> None:
    """What taskpipe's push_bulk does with nothing around it: ids from the sequence,
    rows by COPY, one NOTIFY."""
    now = time.time()
    ids = [
        r[0]
        for r in conn.execute(
            f"SELECT nextval(pg_get_serial_sequence('{JOBS}', 'id')) FROM generate_series(1, %s)",
            (n,),
        )
    ]
    ids.sort()
    with conn.cursor().copy(f"COPY {JOBS} ({_COLUMNS}) FROM STDIN") as copy:
        for task_id, i in zip(ids, range(n), strict=True):
            copy.write_row(
                (task_id, "default", "pending", msgspec.json.encode(i), 0, now)
                + (None, None, None, now)
            )
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "default"))


# Procrastinate ------------------------------------------------------------------------------
class Procrastinate:
    """Procrastinate 3 as its docs show it: ``App(connector=PsycopgConnector(...))``,
    ``task.defer()`` after ``app.open()`` (one transaction each), ``batch_defer`` for
    bulk, ``app.run_worker(concurrency=4, wait=False)`` to drain, async tasks."""

    name = "procrastinate"
    own_database = True

    @staticmethod
    def app(url: str, record: Callable[[float], None] | None = None):
        from procrastinate import App, PsycopgConnector

        app = App(connector=PsycopgConnector(conninfo=url))
        counter = {"n": 0}

        @app.task(name="bench_noop")
        async def noop(i: int) -> None:
            counter["n"] += 1

        @app.task(name="bench_latency")
        async def latency(pushed_at: float) -> None:
            if record is not None:
                record(pushed_at)

        return app, noop, latency, counter

    @classmethod
    def setup(cls, url: str) -> None:
        app, *_ = cls.app(url)
        with app.open():
            app.schema_manager.apply_schema()

    @classmethod
    def push_single(cls, url: str, n: int) -> float:
        app, noop, *_ = cls.app(url)
        with app.open():
            noop.defer(i=-1)  # the pool's first connection, before the clock starts
            start = time.perf_counter()
            for i in range(n):
                noop.defer(i=i)
            return n / (time.perf_counter() - start)

    @classmethod
    def push_bulk(cls, url: str, n: int) -> float:
        app, noop, *_ = cls.app(url)
        with app.open():
            noop.defer(i=-1)
            kwargs = [{"i": i} for i in range(n)]
            start = time.perf_counter()
            noop.batch_defer(*kwargs)
            return n / (time.perf_counter() - start)

    @classmethod
    def fill(cls, url: str, n: int) -> None:
        app, noop, *_ = cls.app(url)
        with app.open():
            noop.batch_defer(*({"i": i} for i in range(n)))

    @classmethod
    def drain(cls, url: str, go: Callable[[], None]) -> int:
        app, _, _, counter = cls.app(url)
        go()
        app.run_worker(concurrency=4, wait=False, install_signal_handlers=False)
        return counter["n"]

    @classmethod
    def listen(cls, url: str, record: Callable[[float], None], ready: Callable[[], None]) -> None:
        app, *_ = cls.app(url, record)
        ready()
        app.run_worker()  # its defaults: concurrency 1, LISTEN/NOTIFY, a 5 s poll

    @classmethod
    @contextmanager
    def producer(cls, url: str) -> Iterator[Callable[[float], None]]:
        app, _, latency, _ = cls.app(url)
        with app.open():
            yield lambda pushed_at: latency.defer(pushed_at=pushed_at)


# pgqueuer -----------------------------------------------------------------------------------
class PgQueuer:
    """pgqueuer as its README shows it: asyncpg, ``Queries.enqueue`` (one statement;
    lists for a batch), ``PgQueuer`` with an async entrypoint run at its defaults
    (batch 10, no concurrency limit); ``mode=drain`` to drain."""

    name = "pgqueuer"
    own_database = True

    @staticmethod
    async def _queries(url: str):
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(url)
        return conn, Queries(AsyncpgDriver(conn))

    @classmethod
    def setup(cls, url: str) -> None:
        async def main() -> None:
            conn, queries = await cls._queries(url)
            await queries.install()
            await conn.close()

        asyncio.run(main())

    @classmethod
    def push_single(cls, url: str, n: int) -> float:
        async def main() -> float:
            conn, queries = await cls._queries(url)
            start = time.perf_counter()
            for i in range(n):
                await queries.enqueue("noop", str(i).encode())
            elapsed = time.perf_counter() - start
            await conn.close()
            return n / elapsed

        return asyncio.run(main())

    @classmethod
    def push_bulk(cls, url: str, n: int) -> float:
        async def main() -> float:
            conn, queries = await cls._queries(url)
            payloads: list[bytes | None] = [str(i).encode() for i in range(n)]
            start = time.perf_counter()
            await queries.enqueue(["noop"] * n, payloads, [0] * n)
            elapsed = time.perf_counter() - start
            await conn.close()
            return n / elapsed

        return asyncio.run(main())

    @classmethod
    def fill(cls, url: str, n: int) -> None:
        async def main() -> None:
            conn, queries = await cls._queries(url)
            await queries.enqueue(["noop"] * n, [str(i).encode() for i in range(n)], [0] * n)
            await conn.close()

        asyncio.run(main())

    @staticmethod
    async def _consumer(url: str, record: Callable[[float], None] | None, counter: dict):
        import asyncpg
        from pgqueuer import PgQueuer as PgQ
        from pgqueuer.db import AsyncpgDriver

        conn = await asyncpg.connect(url)
        pgq = PgQ(AsyncpgDriver(conn))

        @pgq.entrypoint("noop")
        async def noop(job) -> None:
            counter["n"] += 1

        @pgq.entrypoint("latency")
        async def latency(job) -> None:
            if record is not None:
                record(float(job.payload))

        return pgq

    @classmethod
    def drain(cls, url: str, go: Callable[[], None]) -> int:
        from pgqueuer.domain.types import QueueExecutionMode

        counter = {"n": 0}

        async def main() -> None:
            pgq = await cls._consumer(url, None, counter)
            go()
            await pgq.qm.run(mode=QueueExecutionMode.drain)

        asyncio.run(main())
        return counter["n"]

    @classmethod
    def listen(cls, url: str, record: Callable[[float], None], ready: Callable[[], None]) -> None:
        async def main() -> None:
            pgq = await cls._consumer(url, record, {"n": 0})
            ready()
            await pgq.run()  # its defaults: LISTEN/NOTIFY, a 30 s dequeue timeout

        asyncio.run(main())

    @classmethod
    @contextmanager
    def producer(cls, url: str) -> Iterator[Callable[[float], None]]:
        loop = asyncio.new_event_loop()
        conn, queries = loop.run_until_complete(cls._queries(url))

        def push(pushed_at: float) -> None:
            loop.run_until_complete(queries.enqueue("latency", repr(pushed_at).encode()))

        yield push
        loop.run_until_complete(conn.close())
        loop.close()


CONTENDERS = {c.name: c for c in (Taskpipe, Raw, Procrastinate, PgQueuer)}
