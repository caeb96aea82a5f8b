"""``taskpipe.contrib.flask``: the extension, its tasks, eager mode and ``flask taskpipe``."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any

import pytest

flask = pytest.importorskip("flask")

import taskpipe.contrib.flask as tp_flask  # noqa: E402
from taskpipe import Router, Status, TaskFailed, WorkerBuilder, events, open_storage  # noqa: E402
from taskpipe.contrib.flask import AppWorkerBuilder, Taskpipe, app_context  # noqa: E402
from taskpipe.sqlite import SqliteStorage, connect  # noqa: E402


def make_app(tmp_path: Path, name: str = "jobs", **config: Any) -> Any:
    app = flask.Flask(f"app_{name}")
    path = tmp_path / f"{name}.db"
    SqliteStorage.setup(connect(str(path)))
    app.config.update(TASKPIPE_DB=str(path), GREETING="Hello", **config)
    return app


# The extension ----------------------------------------------------------------------------------
def test_a_task_pushed_from_a_view_runs_inside_the_app_context(tmp_path):
    app = make_app(tmp_path)
    tp = Taskpipe(app)

    @tp.task
    def greet(name: str) -> str:
        return f"{flask.current_app.config['GREETING']}, {name} ({flask.current_app.name})"

    @app.post("/greet/<name>")
    def view(name: str) -> dict[str, int]:
        return {"id": int(greet.push(name))}

    task_id = app.test_client().post("/greet/Ada").json["id"]
    assert not flask.has_app_context()
    assert tp.run_until_idle() == [events.Success(task_id, "Hello, Ada (app_jobs)")]
    assert tp.storage.fetch_by_id(task_id).result == "Hello, Ada (app_jobs)"
    with app.app_context():  # a plain call runs here and now, in the caller's context
        assert greet("Bob") == "Hello, Bob (app_jobs)"


def test_the_store_is_the_one_of_the_config_and_its_queue(tmp_path):
    app = make_app(tmp_path, TASKPIPE_QUEUE="mails")
    tp = Taskpipe(app)

    @tp.task
    def send(to: str) -> None: ...

    task_id = send.push("a@example.com")
    other = open_storage(app.config["TASKPIPE_DB"], "mails")
    assert other.fetch_by_id(task_id).args == {"to": "a@example.com"}
    assert tp.storage.queue == "mails" and isinstance(tp.router, Router)
    assert app.extensions["taskpipe"].router is tp.router


def test_an_app_factory_registers_tasks_defined_before_and_after_init_app(tmp_path):
    tp = Taskpipe()

    @tp.task(name="before", priority=3)
    def before(n: int) -> int:
        return n + 1

    first, second = make_app(tmp_path, "one"), make_app(tmp_path, "two")
    tp.init_app(first)
    tp.init_app(second)

    @tp.task(name="after")
    def after(n: int) -> int:
        return n * 10

    with first.app_context():
        one = [before.push(1), after.push(2)]
        assert sorted(tp.router) == ["after", "before"]
        assert tp.storage.fetch_by_id(one[0]).priority == 3
    with second.app_context():
        assert tp.storage.list_tasks() == []  # another database
        two = after.push(5)
        assert tp.run_until_idle() == [events.Success(two, 50)]
    with first.app_context():
        assert tp.run_until_idle() == [events.Success(one[0], 2), events.Success(one[1], 20)]


def test_without_an_app_context_the_app_given_to_the_extension_is_used(tmp_path):
    app = make_app(tmp_path)
    bound = Taskpipe(app)
    free = Taskpipe()
    free.init_app(make_app(tmp_path, "free"))

    @bound.task(name="bound")
    def bound_task() -> None: ...

    @free.task(name="free")
    def free_task() -> None: ...

    assert bound_task.push() == 1
    with pytest.raises(RuntimeError, match="no Flask app"):
        free_task.push()
    with app.app_context(), pytest.raises(RuntimeError, match="init_app.*'app_jobs'"):
        free_task.push()


def test_bad_configuration_and_names_are_clear_errors(tmp_path):
    with pytest.raises(RuntimeError, match=r"TASKPIPE_DB"):
        Taskpipe(flask.Flask("bare"))
    tp = Taskpipe(make_app(tmp_path))

    @tp.task(name="taken")
    def first() -> None: ...

    with pytest.raises(ValueError, match="'taken' is taken"):
        tp.task(name="taken")(lambda: None)
    with pytest.raises(TypeError, match="retries"):
        tp.task(retries="3")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="queue"):
        tp.task(queue="")


def test_using_push_task_and_task_delegate_to_the_routed_task(tmp_path):
    tp = Taskpipe(make_app(tmp_path))

    @tp.task
    def job(n: int) -> int:
        """Doubles."""
        return 2 * n

    delayed = job.using(priority=7, run_after=60).push(1)
    explicit = job.push_task(job.task(2))
    info = tp.storage.fetch_by_id(delayed)
    assert (info.priority, info.args, job.__doc__, job.__name__) == (7, {"n": 1}, "Doubles.", "job")
    assert tp.run_until_idle() == [events.Success(explicit, 4)]
    assert job.routed is tp.router.registered[job.name]


# The app context layer ---------------------------------------------------------------------------
def test_the_app_context_is_innermost_so_a_timeout_thread_sees_it(tmp_path):
    app = make_app(tmp_path)
    tp = Taskpipe(app)
    threads: list[str] = []

    @tp.task
    def where() -> str:
        threads.append(threading.current_thread().name)
        return flask.current_app.name

    task_id = where.push()
    builder = tp.worker_builder("w").timeout(5)
    assert isinstance(builder, AppWorkerBuilder)
    worker = builder.build(tp.router)
    assert worker.run_until_idle() == 1
    assert tp.storage.fetch_by_id(task_id).result == "app_jobs"
    assert "-timeout-" in threads[0]  # ran on the timeout layer's thread, in the app context
    assert len(builder._layers) == 1  # build() added the app context for that build only


def test_app_context_is_a_layer_for_any_worker(tmp_path):
    app = make_app(tmp_path)
    storage = open_storage(app.config["TASKPIPE_DB"])
    storage.push(1)
    worker = (
        WorkerBuilder("plain")
        .backend(storage)
        .layer(app_context(app))
        .build(lambda n: (n, flask.current_app.name))
    )
    worker.run_until_idle()
    assert storage.fetch_by_id(1).result == [1, "app_jobs"]


# Eager mode -------------------------------------------------------------------------------------
def test_eager_config_runs_each_push_at_once_in_the_app_context(tmp_path):
    app = make_app(tmp_path, TASKPIPE_EAGER=True)
    tp = Taskpipe(app)

    @tp.task
    def greet(name: str) -> str:
        return f"{flask.current_app.config['GREETING']}, {name}"

    @tp.task
    def fail() -> None:
        raise LookupError("no such user")

    task_id = greet.push("Ada")
    assert tp.storage.fetch_by_id(task_id).result == "Hello, Ada"
    with pytest.raises(LookupError, match="no such user"):
        fail.push()
    assert tp.storage.list_tasks(status=Status.DEAD)[0].errors[-1].error == (
        "LookupError: no such user"
    )
    with pytest.raises(TaskFailed, match="is dead"):
        greet.push_task(greet.task(name=1))  # pushed as an int, decoded as a str: as in production


# flask taskpipe … ---------------------------------------------------------------------------------
def test_the_worker_command_runs_the_tasks_in_the_app_context(tmp_path):
    app = make_app(tmp_path)
    tp = Taskpipe(app)

    @tp.task(queue="reports")
    def report(day: str) -> str:
        return f"{flask.current_app.config['GREETING']} {day}"

    @tp.task
    def other() -> None: ...

    task_id = report.push("monday")
    runner = app.test_cli_runner()
    idle = runner.invoke(args=["taskpipe", "worker", "--until-idle"])
    assert (idle.exit_code, idle.output) == (0, "handled 0 tasks\n")
    done = runner.invoke(args=["taskpipe", "worker", "--until-idle", "-q", "reports"])
    assert done.exit_code == 0, done.output
    assert done.output == f"task {task_id} done\nhandled 1 task\n"
    assert tp.router.storage_for("reports").fetch_by_id(task_id).result == "Hello monday"
    other_db = runner.invoke(args=["taskpipe", "--db", "other.db", "worker", "--until-idle"])
    assert other_db.exit_code == 2 and "--db is for the other commands" in other_db.output


def test_taskpipe_commands_use_the_config_store_or_db(tmp_path):
    app = make_app(tmp_path)
    tp = Taskpipe(app)

    @tp.task
    def job() -> None: ...

    job.push()
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["taskpipe", "tasks", "--json"])
    assert listed.exit_code == 0, listed.output
    assert '"status": "pending"' in listed.output
    fresh = tmp_path / "fresh.db"
    made = runner.invoke(args=["taskpipe", "setup", "--db", str(fresh)])
    assert (made.exit_code, fresh.exists()) == (0, True)
    empty = runner.invoke(args=["taskpipe", "--db", str(fresh), "tasks", "--json"])
    assert (empty.exit_code, empty.output.strip()) == (0, "[]")
    missing = runner.invoke(args=["taskpipe", "show", "99"])
    assert missing.exit_code == 2
    assert "99" in missing.output


def test_setup_sets_up_the_config_store(tmp_path):
    app = flask.Flask("fresh")
    app.config["TASKPIPE_DB"] = str(tmp_path / "new.db")
    tp = Taskpipe(app)
    result = app.test_cli_runner().invoke(args=["taskpipe", "setup"])
    assert result.exit_code == 0, result.output
    tp.storage.check_setup()


def test_every_public_name_has_a_docstring():
    assert inspect.getdoc(tp_flask)
    names = tp_flask.__all__
    assert [n for n in names if not inspect.getdoc(getattr(tp_flask, n))] == []
    for cls in (Taskpipe, tp_flask.FlaskTask, AppWorkerBuilder):
        undocumented = [
            n for n, m in vars(cls).items() if not n.startswith("_") and not inspect.getdoc(m)
        ]
        assert undocumented == [], cls


def test_the_board_mounts_under_a_prefix(tmp_path):
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from taskpipe.board import make_app

    app = make_app_with_home(tmp_path)
    tp = Taskpipe(app)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/taskpipe": make_app(tp.storage, read_only=True)}
    )
    client = app.test_client()
    assert client.get("/").data == b"home"
    board = client.get("/taskpipe/")
    assert board.status_code == 200 and b"home" not in board.data


def make_app_with_home(tmp_path: Path) -> Any:
    app = make_app(tmp_path, "board")
    app.add_url_rule("/", "home", lambda: "home")
    return app
