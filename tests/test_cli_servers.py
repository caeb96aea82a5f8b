"""The ``taskpipe`` command on server stores, through CliRunner: every command on
PostgreSQL and Redis (and MySQL/MariaDB once ``taskpipe.mysql`` exists), and the
errors a server URL can meet (unreachable, never set up, no driver, a password).

An engine param needs its URL (``TASKPIPE_TEST_POSTGRES_URL``,
``TASKPIPE_TEST_REDIS_URL``, ``TASKPIPE_TEST_MYSQL_URL``) and its module, else it skips
saying why; under ``CI`` it fails instead (``helpers.engine_url``). Each test works in
a place of its own, made here and removed after it: a PostgreSQL schema (the URL's
``search_path``), a Redis key prefix (``?prefix=``), a MySQL database. A new engine
joins by adding its param to ``SERVERS`` and a recipe to ``_place``.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from click.testing import CliRunner, Result
from helpers import engine_url

import taskpipe
from taskpipe.cli import cli, database_path, masked_url

SERVERS = ["postgres", "redis", "mysql"]
PASSWORD = "s3cret-Pw"
Run = Callable[..., Result]


def _with_query(url: str, name: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={quote(value)}"


def _sql(base: str, statement: str) -> None:
    db = taskpipe.connect(base)
    try:
        db.execute_sql(statement)
    finally:
        db.close()


def _place(param: str, base: str) -> Iterator[str]:
    """A URL naming a place of this test's own on ``base``'s server (empty: never set
    up); the place is removed afterwards."""
    name = f"tp_cli_{uuid.uuid4().hex[:12]}"
    if param == "redis":
        url = _with_query(base, "prefix", name)
        yield url
        store = taskpipe.open_storage(url)
        store.drop()  # only this prefix's keys
        store.close()
    elif param == "postgres":
        _sql(base, f"CREATE SCHEMA {name}")
        yield _with_query(base, "options", f"-c search_path={name}")
        _sql(base, f"DROP SCHEMA {name} CASCADE")
    else:  # mysql, mariadb: a database of its own
        _sql(base, f"CREATE DATABASE {name}")
        yield urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
        _sql(base, f"DROP DATABASE {name}")


@pytest.fixture(params=SERVERS)
def place(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an empty place of this test's own, on each engine's server."""
    base = engine_url(request.param, "run the CLI on it")
    yield from _place(request.param, base)


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run(url, *args)``: ``taskpipe ARGS… --db URL`` in-process (exceptions not caught)."""
    monkeypatch.delenv("TASKPIPE_DB", raising=False)
    runner = CliRunner()

    def invoke(url: str, *args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, [*args, "--db", url], input=input, catch_exceptions=False)

    return invoke


def ok(result: Result) -> str:
    """The output of a command that must have succeeded."""
    assert result.exit_code == 0, result.output
    return result.stdout


def one_error(result: Result, code: int, *words: str) -> str:
    """Exit ``code`` with one line on stderr naming ``words``, no traceback; that line."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def _queue() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"


# Every command ----------------------------------------------------------------------------
def test_setup_push_and_look(place: str, run: Run, tmp_path) -> None:
    assert "set up in" in ok(run(place, "setup"))
    assert "set up in" in ok(run(place, "setup"))  # idempotent
    queue = _queue()
    first = json.loads(ok(run(place, "push", '{"n": 1}', "-q", queue, "-p", "5", "--json")))
    lines = tmp_path / "tasks.jsonl"
    lines.write_text('"a"\n"b"\n[3]\n')
    assert ok(run(place, "push", "--file", str(lines), "-q", queue)).strip() == (
        f"pushed 3 tasks to queue {queue}"
    )
    ok(run(place, "push", "0", "-q", _queue()))  # another queue: not in this one's listings

    listed = json.loads(ok(run(place, "tasks", "--queue", queue, "--json")))
    assert sorted(json.dumps(t["args"]) for t in listed) == ['"a"', '"b"', "[3]", '{"n": 1}']
    assert {t["status"] for t in listed} == {"pending"}
    shown = json.loads(ok(run(place, "show", str(first["id"]), "--json")))
    assert (shown["args"], shown["priority"], shown["queue"]) == ({"n": 1}, 5, queue)
    assert f"task {first['id']}" in ok(run(place, "show", str(first["id"])))
    stats = json.loads(ok(run(place, "stats", "--queue", queue, "--json")))
    assert (stats["pending"], stats["done"]) == (4, 0)
    queues = {q["name"]: q for q in json.loads(ok(run(place, "queues", "--json")))}
    assert (queues[queue]["pending"], queues[queue]["total"]) == (4, 4)
    assert isinstance(json.loads(ok(run(place, "workers", "--json"))), list)
    assert queue in ok(run(place, "tasks", "--queue", queue))  # the table, too


def test_worker_retry_kill_purge(place: str, run: Run, tmp_path, monkeypatch) -> None:
    module = f"cli_servers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "def handle(args):\n"
        "    if args == 'boom':\n"
        "        raise RuntimeError('boom on purpose')\n"
        "    return args\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    ok(run(place, "setup"))
    queue = _queue()

    def push(*args: str) -> int:
        return json.loads(ok(run(place, "push", *args, "-q", queue, "--json")))["id"]

    done, boom = push('"fine"'), push('"boom"', "--max-attempts", "1")
    later = push('"later"', "--run-after", "1h")
    worked = ok(run(place, "worker", f"{module}:handle", "-q", queue, "--until-idle"))
    assert f"task {done} done" in worked and f"task {boom} dead" in worked
    assert "handled 2 tasks" in worked
    assert "boom on purpose" in ok(run(place, "show", str(boom)))

    assert ok(run(place, "retry", str(boom))).strip() == f"task {boom} is pending again"
    one_error(run(place, "retry", str(later)), 1, "only failed or dead tasks")
    assert "killed" in ok(run(place, "kill", str(boom), str(later)))
    assert ok(run(place, "retry", "--dead", "-q", queue)).strip() == "2 dead tasks pending again"
    ok(run(place, "kill", str(boom), str(later)))
    one_error(run(place, "kill", "987654321"), 2, "987654321")

    assert ok(run(place, "purge", "done", "dead", "--older-than", "0", "-q", queue)).strip() == (
        "purged 3 tasks"
    )
    assert ok(run(place, "tasks", "-q", queue)).strip() == "no tasks"


def test_pause_and_resume(place: str, run: Run) -> None:
    """A queue paused from the command line holds back a worker in this process (its
    own store object, as another machine's would be), until resumed."""
    ok(run(place, "setup"))
    queue = _queue()
    assert ok(run(place, "pause", queue)).strip() == f"queue {queue} paused"
    assert ok(run(place, "pause", queue)).strip() == f"queue {queue} was already paused"
    listed = {q["name"]: q for q in json.loads(ok(run(place, "queues", "--json")))}
    assert listed[queue]["paused"] is True and listed[queue]["total"] == 0
    store = taskpipe.open_storage(place, queue=queue)
    try:
        store.push("held")
        worker = taskpipe.WorkerBuilder("held").backend(store).build(lambda args: args)
        assert worker.run_until_idle() == 0
        assert ok(run(place, "resume", queue)).strip() == f"queue {queue} resumed"
        assert ok(run(place, "resume", queue)).strip() == f"queue {queue} was not paused"
        assert worker.run_until_idle() == 1
    finally:
        store.close_thread_connection()
        getattr(store, "close", lambda: None)()


# Errors -----------------------------------------------------------------------------------
def test_a_place_never_set_up_says_to_run_setup(place: str, run: Run) -> None:
    for args in (["tasks"], ["push", "1"], ["stats"], ["workers"]):
        line = one_error(run(place, *args), 2, "not set up", "taskpipe setup --db")
        assert masked_url(place) in line
    assert "set up in" in ok(run(place, "setup"))
    assert ok(run(place, "tasks")).strip() == "no tasks"


CLOSED_PORT = {
    "postgres": f"postgresql://me:{PASSWORD}@127.0.0.1:1/jobs",
    "redis": f"redis://:{PASSWORD}@127.0.0.1:1/0",  # redis-py retries for ~15 s first
    "mysql": f"mysql://me:{PASSWORD}@127.0.0.1:1/jobs",
}


@pytest.mark.parametrize("param", SERVERS)
def test_an_unreachable_server_is_one_line_naming_it(param: str, run: Run) -> None:
    engine_url(param, "run the CLI on it")  # its module and driver are there
    line = one_error(run(CLOSED_PORT[param], "tasks"), 1, "127.0.0.1", "***")
    assert PASSWORD not in line


def _with_password(url: str) -> tuple[str, str]:
    """``url`` with a password (``PASSWORD``, unless it has one already) and that password."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    netloc = f"{parts.username or ''}:{PASSWORD}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc)), PASSWORD


def test_the_password_is_never_shown(place: str, run: Run) -> None:
    url, password = _with_password(place)
    if url.startswith("mysql"):  # MySQL checks the password (PostgreSQL here trusts, Redis ignores)
        result = run(url, "tasks")
        one_error(result, 1, masked_url(url), "Access denied")
        assert password not in result.output
        return
    results = [run(url, "tasks"), run(url, "setup"), run(url, "show", "987654321")]
    one_error(results[0], 2, masked_url(url))
    assert masked_url(url) in ok(results[1])
    one_error(results[2], 2, "987654321")
    for result in results:
        assert password not in result.output


def test_a_driver_message_quoting_the_url_loses_the_password(run) -> None:
    pytest.importorskip("psycopg", reason="needs taskpipe[postgres]")
    url = f"POSTGRESQL://me:{PASSWORD}@127.0.0.1:1/jobs"  # postgres.connect quotes it back
    line = one_error(run(url, "tasks"), 2, "invalid --db", "me:***@127.0.0.1")
    assert PASSWORD not in line


@pytest.mark.parametrize(
    "scheme, driver, module, extra",
    [
        ("postgresql", "psycopg", "taskpipe.postgres", "postgres"),
        ("redis", "redis", "taskpipe.redis", "redis"),
    ],
)
def test_a_missing_driver_says_what_to_install(run, monkeypatch, scheme, driver, module, extra):
    monkeypatch.setitem(sys.modules, driver, None)  # importing it fails
    monkeypatch.delitem(sys.modules, module, raising=False)
    url = f"{scheme}://me:{PASSWORD}@127.0.0.1:1/0"
    line = one_error(run(url, "tasks"), 2, f"pip install 'taskpipe[{extra}]'")
    assert PASSWORD not in line


def test_an_engine_this_taskpipe_lacks(run, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "taskpipe.mysql", None)  # as before it was written
    one_error(run("mariadb://127.0.0.1/jobs", "setup"), 2, "no MySQL/MariaDB store")


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://app:pw@db/jobs", "postgresql://app:***@db/jobs"),
        ("redis://:pw@127.0.0.1:6379/0?prefix=a", "redis://:***@127.0.0.1:6379/0?prefix=a"),
        ("postgresql://app:p@ss/w:rd@db/jobs", "postgresql://app:***@db/jobs"),
        (
            "postgresql://db/jobs?user=app&password=pw&sslpassword=x",
            "postgresql://db/jobs?user=app&password=***&sslpassword=***",
        ),
        ("postgresql://app@db/jobs", "postgresql://app@db/jobs"),
        ("redis://pw-or-user@db/0", "redis://pw-or-user@db/0"),  # a user name, by the RFC
        ("jobs.db", "jobs.db"),
    ],
)
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize("url", ["postgres://h/j", "mariadb://h/j", "rediss://h:6380/0"])
def test_every_engine_scheme_is_a_server_url(url: str) -> None:
    assert database_path(url) is None
