"""The board's JSON API and its safety rules, through a WSGI client (no server)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from importlib import resources

import pytest
from board_support import call, csrf_of, post
from click.testing import CliRunner
from freezegun import freeze_time

from taskpipe import Status, Task
from taskpipe.board import make_app
from taskpipe.board.api import PREVIEW_CHARS
from taskpipe.board.app import CSP, MAX_BODY
from taskpipe.cli import cli
from taskpipe.context import WorkerContext
from taskpipe.memory import MemoryBackend
from taskpipe.sqlite import SqliteStorage
from taskpipe.store import Outcome, OutcomeKind


def ctx(name):
    """A worker run's context (its reports dropped)."""
    return WorkerContext(name, capacity=8, report=lambda exc: None)


XSS = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>']


def finish(store, kind, error=None):
    """Claim the next task of ``store`` and ack it with ``kind``; its id."""
    [claim] = store.claim(ctx("t"), 1)
    store.ack([Outcome(claim, kind, error=error, delay=3600)])
    return claim.id


@pytest.fixture
def app(storage):
    """The board over a SQLite store."""
    return make_app(storage)


# The page ---------------------------------------------------------------------------------
def test_the_page_carries_a_csrf_token_a_strict_csp_and_no_inline_script(app):
    page = call(app, "GET", "/")
    assert page.status == 200
    assert page.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert "frame-ancestors 'none'" in CSP
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert re.search(r'name="csrf-token" content="[\w-]{20,}"', page.text)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert "style=" not in page.text and "<style" not in page.text


def test_the_script_never_inserts_html():
    script = resources.files("taskpipe.board").joinpath("static", "board.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


def test_static_files_are_served_and_nothing_else(app):
    js = call(app, "GET", "/static/board.js")
    assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert call(app, "GET", "/static/board.css").status == 200
    for path in ("/static/../app.py", "/static/index.html", "/static/nope.js"):
        assert call(app, "GET", path).status == 404


def test_mounted_under_a_prefix_the_page_redirects_to_its_slash(app):
    answer = call(app, "GET", "", script_name="/ops/board")
    assert answer.status == 302 and answer.headers["Location"] == "/ops/board/"
    assert call(app, "GET", "/", script_name="/ops/board").status == 200


# Reading ---------------------------------------------------------------------------------
def test_overview_counts_per_queue_with_throughput_lag_and_workers(storage):
    emails = SqliteStorage(storage.db, queue="emails")
    storage.push_bulk(["a", "b", "c"])
    finish(storage, OutcomeKind.DONE)
    finish(storage, OutcomeKind.DEAD, error="boom")
    emails.push("hello")
    data = call(make_app(storage), "GET", "/api/overview").json
    queues = {q["name"]: q for q in data["queues"]}
    assert queues["default"]["counts"] == {
        "pending": 1,
        "running": 0,
        "done": 1,
        "failed": 0,
        "dead": 1,
    }
    assert queues["emails"]["counts"]["pending"] == 1
    assert queues["emails"]["lag"] is not None and queues["emails"]["lag"] >= 0
    assert len(data["hour"]) == 12 and len(data["day"]) == 24
    assert sum(b["done"] for b in data["hour"]) == 1
    assert sum(b["failed"] for b in data["day"]) == 1
    assert data["workers"] == []


def test_task_list_filters_by_queue_and_status_and_pages(storage):
    emails = SqliteStorage(storage.db, queue="emails")
    ids = storage.push_bulk([f"d{i}" for i in range(5)])
    other = emails.push("e")
    app = make_app(storage)
    page = call(app, "GET", "/api/tasks", query="queue=default&limit=2").json
    assert [t["id"] for t in page["tasks"]] == [ids[4], ids[3]] and page["more"] is True
    last = call(app, "GET", "/api/tasks", query="queue=default&limit=2&page=2").json
    assert [t["id"] for t in last["tasks"]] == [ids[0]] and last["more"] is False
    found = call(app, "GET", "/api/tasks", query="queue=emails&status=pending").json
    assert [t["id"] for t in found["tasks"]] == [other]
    assert call(app, "GET", "/api/tasks", query="status=dead").json["tasks"] == []
    assert [
        t["id"] for t in call(app, "GET", "/api/tasks", query=f"id={ids[2]}").json["tasks"]
    ] == [ids[2]]
    assert call(app, "GET", "/api/tasks", query="id=99999").json["tasks"] == []


def test_large_payloads_are_cut_in_lists_and_whole_on_the_task_page(storage):
    big = "x" * 5000
    tid = storage.push({"blob": big})
    app = make_app(storage)
    [row] = call(app, "GET", "/api/tasks").json["tasks"]
    assert row["args"]["truncated"] is True
    assert len(row["args"]["text"]) == PREVIEW_CHARS + 1  # and an ellipsis
    task = call(app, "GET", f"/api/tasks/{tid}").json
    assert task["args"] == {"blob": big}
    assert big in task["args_text"]


def test_the_task_page_has_attempts_with_tracebacks_and_times(storage):
    tid = storage.push_task(Task({"n": 1}, priority=3, max_attempts=5))
    [claim] = storage.claim(ctx("w"), 1)
    storage.ack(
        [
            Outcome(
                claim, OutcomeKind.RETRY, error="ValueError: bad", traceback="Traceback…", delay=60
            )
        ]
    )
    task = call(make_app(storage), "GET", f"/api/tasks/{tid}").json
    assert (task["status"], task["priority"], task["max_attempts"]) == ("failed", 3, 5)
    [error] = task["errors"]
    assert (error["attempt"], error["error"], error["traceback"]) == (
        1,
        "ValueError: bad",
        "Traceback…",
    )
    assert task["run_at"] and task["created_at"] and task["started_at"]


@pytest.mark.parametrize("payload", XSS)
def test_markup_from_the_store_comes_back_as_json_text(storage, payload):
    tid = storage.push({"note": payload})
    [claim] = storage.claim(ctx("w"), 1)
    storage.ack([Outcome(claim, OutcomeKind.DEAD, error=payload, traceback=payload)])
    app = make_app(storage)
    listed = call(app, "GET", "/api/tasks")
    assert listed.headers["Content-Type"] == "application/json; charset=utf-8"
    assert listed.headers["X-Content-Type-Options"] == "nosniff"
    [row] = listed.json["tasks"]
    assert json.loads(row["args"]["text"]) == {"note": payload}
    assert row["error"]["text"] == payload
    assert call(app, "GET", f"/api/tasks/{tid}").json["errors"][0]["traceback"] == payload


# Actions ---------------------------------------------------------------------------------
def test_an_action_without_the_csrf_token_is_refused_and_changes_nothing(storage):
    tid = storage.push("x")
    app = make_app(storage)
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        answer = call(app, "POST", f"/api/tasks/{tid}/kill", headers=headers)
        assert answer.status == 403 and "CSRF" in answer.json["error"]
    assert storage.fetch_by_id(tid).status is Status.PENDING
    assert post(app, f"/api/tasks/{tid}/kill").json == {"id": tid, "action": "kill", "done": True}
    assert storage.fetch_by_id(tid).status is Status.DEAD


def test_a_request_from_another_origin_is_refused(storage):
    tid = storage.push("x")
    answer = post(
        make_app(storage),
        f"/api/tasks/{tid}/kill",
        headers={"Origin": "http://evil.example", "Host": "127.0.0.1:8000"},
    )
    assert answer.status == 403
    assert storage.fetch_by_id(tid).status is Status.PENDING


def test_get_never_acts(storage):
    tid = storage.push("x")
    app = make_app(storage)
    for path in (f"/api/tasks/{tid}/kill", f"/api/tasks/{tid}/delete", "/api/queues/default/pause"):
        answer = call(app, "GET", path, headers=csrf_of(app))
        assert answer.status == 405 and "POST" in answer.json["error"]
    assert storage.fetch_by_id(tid).status is Status.PENDING


def test_retry_kill_and_delete(storage):
    storage.push_bulk(["a", "b"])
    dead = finish(storage, OutcomeKind.DEAD, error="E")
    app = make_app(storage)
    assert post(app, f"/api/tasks/{dead}/retry").json["done"] is True
    assert storage.fetch_by_id(dead).status is Status.PENDING
    assert post(app, f"/api/tasks/{dead}/retry").json["done"] is False
    pending = storage.list_tasks(status="pending")[-1].id
    assert post(app, f"/api/tasks/{pending}/delete").json["done"] is True  # killed, then deleted
    assert post(app, f"/api/tasks/{pending}/delete").status == 404
    assert post(app, "/api/tasks/424242/retry").status == 404
    assert post(app, f"/api/tasks/{dead}/explode").status == 404


def test_retry_all_dead_of_a_queue(storage):
    emails = SqliteStorage(storage.db, queue="emails")
    storage.push_bulk(["a", "b"])
    emails.push("c")
    finish(storage, OutcomeKind.DEAD, error="E")
    finish(storage, OutcomeKind.DEAD, error="E")
    finish(emails, OutcomeKind.DEAD, error="E")
    assert post(make_app(storage), "/api/queues/default/retry-dead").json == {
        "queue": "default",
        "count": 2,
    }
    assert emails.list_tasks(queue="emails")[0].status is Status.DEAD


def test_push_a_task_as_json_into_any_queue(storage):
    app = make_app(storage)
    answer = post(app, "/api/queues/emails/tasks", {"args": {"to": "a@b"}, "priority": 2})
    assert answer.status == 200 and answer.json["queue"] == "emails"
    info = storage.fetch_by_id(answer.json["id"])
    assert (info.queue, info.args, info.priority) == ("emails", {"to": "a@b"}, 2)


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b'{"args": 1}', {"Content-Type": "text/plain"}, 415),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400),
        (b'{"payload": 1}', {"Content-Type": "application/json"}, 400),
        (b'{"args": 1, "priority": "high"}', {"Content-Type": "application/json"}, 400),
        (b'{"args": 1, "run_after": -5}', {"Content-Type": "application/json"}, 400),
        (b'{"args": 1, "run_after": 1e20}', {"Content-Type": "application/json"}, 400),
        (b'{"args": 1, "run_after": 1e13}', {"Content-Type": "application/json"}, 400),
        (b'{"args": 1, "run_after": NaN}', {"Content-Type": "application/json"}, 400),
        (b'{"args": 1, "max_attempts": 0}', {"Content-Type": "application/json"}, 400),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 400),
        (None, {"Content-Type": "application/json"}, 400),
    ],
)
def test_a_malformed_push_gets_a_4xx_json_error(storage, body, headers, status):
    app = make_app(storage)
    answer = call(
        app, "POST", "/api/queues/q/tasks", body=body, headers={**csrf_of(app), **headers}
    )
    assert answer.status == status
    assert isinstance(answer.json["error"], str) and "Traceback" not in answer.text
    assert storage.list_tasks() == []


def test_a_body_over_the_limit_is_refused_unread(storage):
    app = make_app(storage)
    headers = {**csrf_of(app), "Content-Type": "application/json"}
    answer = call(app, "POST", "/api/queues/q/tasks", body=b"{}", headers=headers)
    assert answer.status == 400
    headers["Content-Length"] = str(MAX_BODY + 1)
    answer = call(app, "POST", "/api/queues/q/tasks", headers=headers)
    assert answer.status == 413


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/tasks", "status=bogus"),
        ("/api/tasks", "page=-1"),
        ("/api/tasks", "limit=abc"),
        ("/api/tasks", "limit=100000"),
        ("/api/tasks", "id=12x"),
        ("/api/tasks", "queue=" + "q" * 300),
        ("/api/tasks", "queue=%ff"),
        ("/api/runs/not:a:run", ""),
        ("/api/runs", "limit=0"),
    ],
)
def test_a_malformed_read_gets_a_400_json_error(app, path, query):
    answer = call(app, "GET", path, query=query)
    assert answer.status == 400, answer.body
    assert answer.json["error"]


def test_unknown_paths_get_a_404_json_error(app):
    for path in ("/api/nothing", "/api/tasks/1/2/3", "/favicon.ico"):
        answer = call(app, "GET", path)
        assert answer.status == 404 and answer.json["error"]


def test_a_failure_inside_gets_a_500_without_a_traceback(storage, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(storage, "list_tasks", broken)
    answer = call(make_app(storage), "GET", "/api/tasks")
    assert answer.status == 500
    assert "secret" not in answer.text and "Traceback" not in answer.text
    assert "secret detail" in caplog.text  # logged for the operator


# Read-only and the token ---------------------------------------------------------------------
def test_read_only_refuses_every_action_and_tells_the_page(storage):
    tid = storage.push("x")
    app = make_app(storage, read_only=True)
    assert 'name="read-only" content="1"' in call(app, "GET", "/").text
    for path, payload in (
        (f"/api/tasks/{tid}/kill", None),
        ("/api/queues/default/tasks", {"args": 1}),
        ("/api/queues/default/retry-dead", None),
    ):
        answer = post(app, path, payload)
        assert answer.status == 403 and "read-only" in answer.json["error"]
    assert [t.id for t in storage.list_tasks()] == [tid]
    assert storage.fetch_by_id(tid).status is Status.PENDING


def test_with_a_token_every_request_needs_it(storage):
    app = make_app(storage, token="s3cret-token")
    for path in ("/", "/api/overview", "/static/board.js"):
        answer = call(app, "GET", path)
        assert answer.status == 401 and answer.json["error"]
    assert call(app, "GET", "/", query="token=wrong-token").status == 401
    bearer = {"Authorization": "Bearer s3cret-token"}
    assert call(app, "GET", "/api/overview", headers=bearer).status == 200
    assert call(app, "GET", "/api/overview", headers={"Authorization": "Bearer nope"}).status == 401


def test_opening_the_page_with_the_token_sets_a_cookie_without_the_token(storage):
    app = make_app(storage, token="s3cret-token")
    opened = call(app, "GET", "/", query="token=s3cret-token")
    assert opened.status == 302 and opened.headers["Location"] == "/"
    cookie = opened.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "s3cret-token" not in cookie
    value = cookie.split(";", 1)[0]
    assert call(app, "GET", "/api/overview", headers={"Cookie": value}).status == 200
    assert call(app, "GET", "/api/overview", headers={"Cookie": value + "x"}).status == 401


def test_a_short_token_is_refused(storage):
    with pytest.raises(ValueError):
        make_app(storage, token="short")


# Pausing, schedules, workflows -------------------------------------------------------------------
def test_pause_and_resume_a_queue(storage):
    app = make_app(storage)
    assert post(app, "/api/queues/default/pause").json == {"queue": "default", "paused": True}
    queues = {q["name"]: q for q in call(app, "GET", "/api/overview").json["queues"]}
    assert queues["default"]["paused"] is True
    assert post(app, "/api/queues/default/resume").json["paused"] is False


def test_schedules_show_each_cron_stream_with_its_last_and_next_tick(storage):
    def tick(name, due):
        return Task({"due": due.isoformat()}, key=f"cron:{name}:{due.isoformat()}")

    base = datetime(2030, 1, 1, 7, tzinfo=UTC)
    storage.push_task(tick("morning", base))
    storage.push_task(tick("morning", base + timedelta(days=1)))
    storage.push_task(tick("every 5%3A minutes", base))
    with freeze_time(base + timedelta(days=1, hours=1)):
        data = call(make_app(storage), "GET", "/api/schedules").json
    assert data["available"] is True
    streams = {s["name"]: s for s in data["streams"]}
    assert set(streams) == {"morning", "every 5: minutes"}
    morning = streams["morning"]
    assert morning["last_due"] == (base + timedelta(days=1)).isoformat()
    assert morning["next_due"] == (base + timedelta(days=2)).isoformat()
    assert morning["next_estimated"] is True and morning["last_status"] == "pending"
    assert streams["every 5: minutes"]["next_due"] is None  # one tick: nothing to go by


def test_schedules_with_the_stream_given_tell_the_next_tick_exactly(storage):
    from taskpipe.cron import CronStream

    stream = CronStream("0 7 * * *", name="morning")
    base = datetime(2030, 1, 1, 7, tzinfo=UTC)
    storage.push_task(stream.task(base))
    with freeze_time(base + timedelta(hours=1)):
        data = call(make_app(storage, streams=[stream]), "GET", "/api/schedules").json
    [only] = data["streams"]
    assert only["next_due"] == (base + timedelta(days=1)).isoformat()
    assert only["next_estimated"] is False


def test_workflow_runs_list_their_steps(storage):
    from taskpipe.workflow import Workflow

    def first(n: int) -> int:
        return n + 1

    def second(n: int) -> int:
        return n * 2

    flow = Workflow("double").and_then(first).and_then(second)
    run_id = storage.push_start(3, flow=flow)
    app = make_app(storage)
    runs = call(app, "GET", "/api/runs").json
    assert runs["available"] is True
    assert [r["run_id"] for r in runs["runs"]] == [run_id]
    run = call(app, "GET", f"/api/runs/{run_id}").json
    assert run["workflow"] == "double" and run["state"] == "running"
    assert [s["state"] for s in run["steps"]][0] == "pending"
    assert call(app, "GET", "/api/runs/0123456789abcdef0000").status == 404


def test_a_memory_store_works_too():
    store = MemoryBackend()
    store.push("x")
    app = make_app(store)
    assert call(app, "GET", "/api/overview").json["queues"][0]["counts"]["pending"] == 1
    assert post(app, "/api/queues/elsewhere/tasks", {"args": 1}).status == 404


def test_a_store_without_introspection_is_refused():
    from taskpipe.errors import CapabilityError
    from taskpipe.store import Store

    with pytest.raises(CapabilityError):
        make_app(Store())


# The command ---------------------------------------------------------------------------------
def test_the_command_refuses_a_reachable_address_without_a_token(dbfile_cli):
    result = CliRunner().invoke(
        cli, ["board", "--db", dbfile_cli, "--host", "0.0.0.0"], catch_exceptions=False
    )
    assert result.exit_code != 0
    assert "--token" in result.output and "--insecure-no-auth" in result.output


def test_the_command_refuses_a_short_token(dbfile_cli):
    result = CliRunner().invoke(
        cli, ["board", "--db", dbfile_cli, "--token", "abc"], catch_exceptions=False
    )
    assert result.exit_code != 0 and "at least 8" in result.output


@pytest.fixture
def dbfile_cli(db_path, db):
    """A set-up database file's path."""
    return db_path


def _etl():
    """A DAG: three start nodes feeding one collector."""
    from taskpipe.workflow import DagFlow

    def get_name(user_id: int) -> str:
        return str(user_id)

    def get_age(user_id: int) -> int:
        return 1

    def get_city(user_id: int) -> int:
        return 2

    def collect(inputs: tuple[str, int, int]) -> int:
        return int(inputs[0]) + inputs[1] + inputs[2]

    dag = DagFlow("etl")
    parents = dag.node(get_name), dag.node(get_age), dag.node(get_city)
    dag.node(collect).depends_on(*parents)
    dag.validate()
    return dag


def test_a_dag_run_tells_when_each_node_started(storage):
    from taskpipe import WorkerBuilder

    dag = _etl()
    run_id = storage.start_fan_out([1, 2, 3], flow=dag)
    WorkerBuilder("etl").backend(storage).build(dag).run_until_idle()
    run = call(make_app(storage), "GET", f"/api/runs/{run_id}").json
    assert run["state"] == "done"
    starts = {s["name"]: s["created_at"] for s in run["steps"]}
    assert starts["get_name"] == starts["get_age"] == starts["get_city"]
    assert starts["collect"] > starts["get_name"]


@pytest.mark.parametrize("task_id", ["9" * 19, "9" * 30])
def test_a_task_id_past_the_stores_integers_is_not_found_not_a_500(storage, task_id):
    app = make_app(storage)
    for answer in (
        call(app, "GET", f"/api/tasks/{task_id}"),
        post(app, f"/api/tasks/{task_id}/retry"),
        call(app, "GET", "/api/tasks", query=f"id={task_id}"),
    ):
        assert answer.status == 400 and "not a task id" in answer.json["error"]


class _CapturedServer:
    """What ``make_board_server`` returns in the command's tests: keeps the app."""

    server_port = 8000
    app = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def serve_forever(self):
        """Return at once (the test asks the app directly)."""


def _served_app(monkeypatch, args):
    """The WSGI app ``taskpipe board ARGS`` would serve."""
    import taskpipe.board.server

    captured = _CapturedServer()

    def fake(app, host, port, *, quiet=False):
        captured.app = app
        return captured

    monkeypatch.setattr(taskpipe.board.server, "make_board_server", fake)
    result = CliRunner().invoke(cli, ["board", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return captured.app


def test_without_a_token_the_command_answers_loopback_host_names_only(dbfile_cli, monkeypatch):
    # a page of another site whose DNS name now points at 127.0.0.1 (DNS rebinding) is
    # same-origin with the board: it could read the CSRF token and act
    app = _served_app(monkeypatch, ["--db", dbfile_cli])
    evil = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
    assert call(app, "GET", "/", headers=evil).status == 403
    assert call(app, "GET", "/api/overview", headers=evil).status == 403
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
        assert call(app, "GET", "/", headers={"Host": host}).status == 200, host


def test_with_a_token_or_insecure_no_auth_any_host_name_is_answered(dbfile_cli, monkeypatch):
    app = _served_app(monkeypatch, ["--db", dbfile_cli, "--token", "s3cret-token"])
    bearer = {"Host": "jobs.example.com", "Authorization": "Bearer s3cret-token"}
    assert call(app, "GET", "/api/overview", headers=bearer).status == 200
    app = _served_app(monkeypatch, ["--db", dbfile_cli, "--host", "0.0.0.0", "--insecure-no-auth"])
    assert call(app, "GET", "/", headers={"Host": "jobs.example.com"}).status == 200


def test_each_request_closes_its_threads_connection(storage):
    # the board's server answers each request on a new thread: a connection left open
    # there lives on (an open file per request) until the garbage collector finds it
    app = make_app(storage)
    storage.push("x")
    for path in ("/api/overview", "/api/tasks", "/api/tasks/1"):
        assert call(app, "GET", path).status == 200
        assert storage.db.is_closed(), path
    assert post(app, "/api/tasks/1/kill").json["done"] is True
    assert storage.db.is_closed()
    assert storage.fetch_by_id(1).status is Status.DEAD  # it opens again when needed


def test_a_script_with_the_bearer_token_acts_without_a_csrf_token(storage):
    # a browser never adds an Authorization header by itself: a request carrying the
    # token there is no forgery, and a script has no page to read a CSRF token from
    tid = storage.push("x")
    app = make_app(storage, token="s3cret-token")
    bearer = {"Authorization": "Bearer s3cret-token"}
    answer = call(app, "POST", f"/api/tasks/{tid}/kill", headers=bearer)
    assert answer.status == 200 and answer.json["done"] is True
    # the cookie the page sets is sent by browsers on their own: it still needs the CSRF
    cookie = call(app, "GET", "/", query="token=s3cret-token").headers["Set-Cookie"]
    answer = call(app, "POST", f"/api/tasks/{tid}/retry", headers={"Cookie": cookie.split(";")[0]})
    assert answer.status == 403 and "CSRF" in answer.json["error"]


def test_with_a_token_every_process_of_a_server_accepts_the_same_csrf_token(storage):
    # a WSGI server with several processes builds one app in each: the page may come
    # from one and the action go to another
    tid = storage.push("x")
    first, second = (make_app(storage, token="s3cret-token") for _ in range(2))
    cookie = call(first, "GET", "/", query="token=s3cret-token").headers["Set-Cookie"]
    page = call(first, "GET", "/", headers={"Cookie": cookie.split(";")[0]}).text
    csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    assert csrf and "s3cret-token" not in csrf
    headers = {"Cookie": cookie.split(";")[0], "X-CSRF-Token": csrf}
    assert call(second, "POST", f"/api/tasks/{tid}/kill", headers=headers).status == 200
    other = make_app(storage, token="another-token")
    assert (
        csrf not in call(other, "GET", "/", headers={"Authorization": "Bearer another-token"}).text
    )


def test_a_queue_whose_name_has_a_slash_can_be_acted_on(storage):
    # the page sends reports%2Fdaily; the WSGI server decodes PATH_INFO to reports/daily
    app = make_app(storage)
    pushed = post(app, "/api/queues/reports/daily/tasks", {"args": {"n": 1}})
    assert pushed.status == 200 and pushed.json["queue"] == "reports/daily"
    other = SqliteStorage(storage.db, queue="reports/daily")
    finish(other, OutcomeKind.DEAD, error="Boom: x")
    answer = post(app, "/api/queues/reports/daily/retry-dead")
    assert answer.status == 200 and answer.json["count"] == 1
    assert other.fetch_by_id(pushed.json["id"]).status is Status.PENDING


def test_a_missing_run_is_a_404_that_does_not_tell_where_the_database_is(storage, db_path):
    answer = call(make_app(storage), "GET", "/api/runs/0123456789abcdef0000")
    assert answer.status == 404 and "0123456789abcdef0000" in answer.json["error"]
    assert str(db_path) not in answer.text and "SqliteStorage" not in answer.text


def test_two_boards_on_one_host_keep_their_own_cookies(storage):
    # a browser keeps cookies by host name, not port: boards on :8000 and :8001 with
    # cookies of one name would log each other out
    first = make_app(storage, token="first-token")
    second = make_app(storage, token="second-token")
    cookies = [
        call(app, "GET", "/", query=f"token={token}").headers["Set-Cookie"].split(";")[0]
        for app, token in ((first, "first-token"), (second, "second-token"))
    ]
    assert cookies[0].split("=")[0] != cookies[1].split("=")[0]
    both = "; ".join(cookies)
    assert call(first, "GET", "/api/overview", headers={"Cookie": both}).status == 200
    assert call(second, "GET", "/api/overview", headers={"Cookie": both}).status == 200
