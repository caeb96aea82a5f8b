"""The Django backend (taskpipe.contrib.django) on Django's tasks framework: enqueue,
get_result, the worker's dispatch, ENQUEUE_ON_COMMIT and ``manage.py taskpipe``.

Runs on Django >= 6.0 (``django.tasks``) or on the ``django-tasks`` backport; skipped
when neither is installed. Django's settings are configured once for this process
(nothing else in the suite uses Django); each test gets its own taskpipe database
through ``override_settings(TASKS=...)``."""

from __future__ import annotations

import importlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

django = pytest.importorskip("django", reason="Django is not installed (extra: django)")
try:
    importlib.import_module("taskpipe.contrib.django._compat")
except ImportError as exc:  # Django without its tasks framework (< 6.0, no backport)
    pytest.skip(f"Django's tasks framework is missing: {exc}", allow_module_level=True)

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["taskpipe.contrib.django"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
        TASKS={  # replaced in each test; the @task decorators need one at import
            "default": {
                "BACKEND": "taskpipe.contrib.django.TaskpipeBackend",
                "OPTIONS": {"db": "never-opened.db"},
            }
        },
    )
    django.setup()

import django_support as tasks  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from freezegun import freeze_time  # noqa: E402
from helpers import ENGINES, engine_url  # noqa: E402

import taskpipe  # noqa: E402
from taskpipe import Status, Task, WorkerBuilder  # noqa: E402
from taskpipe.contrib.django import TaskpipeBackend, backend  # noqa: E402
from taskpipe.contrib.django._compat import (  # noqa: E402
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
)
from taskpipe.contrib.django.backend import task_error  # noqa: E402
from taskpipe.contrib.django.worker import DjangoTasks  # noqa: E402
from taskpipe.router import NAME_META  # noqa: E402
from taskpipe.sqlite import SqliteStorage, connect  # noqa: E402
from taskpipe.task import AttemptError  # noqa: E402


def tasks_setting(db_path: str, **extra):
    options = extra.pop("OPTIONS", {})
    return {
        "default": {
            "BACKEND": "taskpipe.contrib.django.TaskpipeBackend",
            "OPTIONS": {"db": db_path, **options},
            **extra,
        }
    }


@pytest.fixture
def db_url(tmp_path):
    """A set-up taskpipe SQLite database for this test."""
    path = str(tmp_path / "jobs.db")
    database = connect(path)
    SqliteStorage.setup(database)
    database.close()
    return path


@pytest.fixture
def configure(db_url):
    """``configure(**backend_settings)``: TASKS["default"] on this test's database."""
    overrides = []

    def apply(**extra):
        override = override_settings(TASKS=tasks_setting(db_url, **extra))
        override.enable()
        overrides.append(override)
        return task_backends["default"]

    yield apply
    for override in reversed(overrides):
        override.disable()
    with backend._stores_lock:
        for store in backend._stores.values():
            store.close_thread_connection()
            if hasattr(store, "close"):  # Redis: its client's pooled sockets
                store.close()
        backend._stores.clear()
    tasks.ran.clear()


@pytest.fixture
def tp(configure):
    """The TaskpipeBackend of this test (default settings)."""
    return configure()


def run_worker(store, **builder):
    """Run the Django tasks due on ``store`` in this thread; return how many ran."""
    worker = WorkerBuilder("django-test").backend(store)
    for name, value in builder.items():
        getattr(worker, name)(value)
    return worker.build(DjangoTasks()).run_until_idle()


def test_enqueue_then_worker_then_get_result(tp):
    assert isinstance(tp, TaskpipeBackend)
    result = tasks.add.enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY
    assert int(result.id) > 0
    stored = tp.storage.fetch_by_id(int(result.id))
    assert stored.args == {"args": [2], "kwargs": {"b": 3}}
    assert stored.meta[NAME_META] == "django_support.add"
    assert tasks.add.get_result(result.id).status == TaskResultStatus.READY

    assert run_worker(tp.storage) == 1
    done = tasks.add.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 5
    assert (done.args, done.kwargs) == ([2], {"b": 3})
    assert done.attempts == 1 and done.worker_ids[-1]
    assert done.errors == []
    assert done.enqueued_at <= done.started_at <= done.finished_at
    assert done.task.func is tasks.add.func and done.backend == "default"
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5


def test_return_value_is_json_normalised(tp):
    result = tasks.pair.enqueue("abc")
    run_worker(tp.storage)
    assert tasks.pair.get_result(result.id).return_value == ["abc", 3]


def test_a_failed_task_has_its_exception_class_and_traceback(tp):
    result = tasks.boom.enqueue("it broke")
    run_worker(tp.storage)
    failed = tasks.boom.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.is_finished and failed.finished_at is not None
    [error] = failed.errors
    assert error.exception_class_path == "django_support.Boom"
    assert error.exception_class is tasks.Boom
    assert "django_support.Boom: it broke" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        failed.return_value  # noqa: B018


def test_a_chained_builtin_exception_is_found_after_its_cause(tp):
    result = tasks.bad_value.enqueue()
    run_worker(tp.storage)
    [error] = tasks.bad_value.get_result(result.id).errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert "KeyError" in error.traceback  # the cause is kept in the traceback


def test_task_error_of_what_taskpipe_itself_recorded():
    at = datetime.now(UTC)
    error = task_error(AttemptError(2, "interrupted by shutdown", None, at))
    assert error.exception_class_path == "taskpipe.errors.TaskpipeError"
    assert error.traceback == "interrupted by shutdown"
    # the "Type: message" line names the class; a message line that looks like one does not
    text = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    g()\npkg.mod.Oops: a\nb.C: d\n'
    assert task_error(AttemptError(1, "Oops: a", text, at)).exception_class_path == "pkg.mod.Oops"


def test_retries_keep_one_error_per_attempt_and_ready_between(configure):
    tp = configure(OPTIONS={"max_attempts": 2})
    with freeze_time("2026-01-01 12:00:00") as frozen:
        result = tasks.boom.enqueue("again")
        run_worker(tp.storage)
        waiting = tasks.boom.get_result(result.id)
        assert waiting.status == TaskResultStatus.READY  # failed once, will run again
        assert waiting.attempts == 1 and len(waiting.errors) == 1
        frozen.tick(timedelta(minutes=5))
        run_worker(tp.storage)
    dead = tasks.boom.get_result(result.id)
    assert dead.status == TaskResultStatus.FAILED
    assert dead.attempts == 2 and len(dead.errors) == 2


def test_takes_context_gets_the_attempt_and_result_id(tp):
    result = tasks.attempt_and_id.enqueue()
    run_worker(tp.storage)
    assert tasks.attempt_and_id.get_result(result.id).return_value == [1, result.id]


def test_async_task(tp):
    assert tp.supports_async_task
    result = tasks.double.enqueue(21)
    run_worker(tp.storage)
    assert tasks.double.get_result(result.id).return_value == 42


def test_higher_priority_runs_first(tp):
    tasks.record.using(priority=-10).enqueue("low")
    tasks.record.enqueue("normal")
    high = tasks.record.using(priority=100).enqueue("high")
    assert tp.storage.fetch_by_id(int(high.id)).priority == 100
    run_worker(tp.storage, concurrency=1)
    assert tasks.ran == ["high", "normal", "low"]
    assert tasks.record.get_result(high.id).task.priority == 100


def test_run_after_defers_the_task(tp):
    with freeze_time("2026-01-01 12:00:00") as frozen:
        due = datetime(2026, 1, 1, 13, 0, tzinfo=UTC)
        result = tasks.record.using(run_after=due).enqueue("later")
        assert run_worker(tp.storage) == 0
        waiting = tasks.record.get_result(result.id)
        assert waiting.status == TaskResultStatus.READY
        assert waiting.task.run_after == due
        frozen.tick(timedelta(hours=1))
        assert run_worker(tp.storage) == 1
    assert tasks.ran == ["later"]


def test_queues_are_taskpipe_queues_of_the_same_database(configure):
    tp = configure(QUEUES=["default", "emails"], OPTIONS={"queue": "django"})
    first = tasks.record.enqueue("on default")
    second = tasks.record.using(queue_name="emails").enqueue("on emails")
    assert tp.storage.queue == "django"
    assert tp.storage.fetch_by_id(int(first.id)).queue == "django"
    assert tp.storage.fetch_by_id(int(second.id)).queue == "emails"
    with pytest.raises(InvalidTask):
        tasks.record.using(queue_name="other").enqueue("nowhere")
    assert run_worker(tp.storage_for("emails")) == 1
    assert tasks.ran == ["on emails"]
    assert tasks.record.get_result(second.id).task.queue_name == "emails"
    assert tasks.record.get_result(first.id).task.queue_name == "default"


def test_get_result_of_no_such_task(tp):
    with pytest.raises(TaskResultDoesNotExist):
        tp.get_result("12345")
    with pytest.raises(TaskResultDoesNotExist):
        tp.get_result("not-an-id")
    plain = tp.storage.push({"args": [], "kwargs": {}})  # no Django task name
    with pytest.raises(TaskResultDoesNotExist, match="not a Django task"):
        tp.get_result(str(int(plain)))


def test_a_task_no_import_finds_is_dead_naming_it(tp):
    task_id = tp.storage.push_task(
        Task({"args": [], "kwargs": {}}, meta={NAME_META: "django_support.missing"})
    )
    run_worker(tp.storage)
    info = tp.storage.fetch_by_id(task_id)
    assert info.status is Status.DEAD
    assert "django_support.missing" in info.errors[-1].error


def test_the_worker_closes_old_connections_around_each_task(tp, monkeypatch):
    import django.db

    calls = []
    monkeypatch.setattr(django.db, "close_old_connections", lambda: calls.append("close"))
    monkeypatch.setattr(tasks, "ran", calls)
    tasks.record.enqueue("task")
    run_worker(tp.storage)
    assert calls == ["close", "task", "close"]


def test_django_signals_around_each_attempt(tp):
    from taskpipe.contrib.django._compat import task_enqueued, task_finished, task_started

    seen = []

    def receiver(signal):
        def receive(sender, task_result, **kwargs):
            seen.append((signal, task_result.id, str(task_result.status)))

        return receive

    receivers = {name: receiver(name) for name in ("enqueued", "started", "finished")}
    signals = {"enqueued": task_enqueued, "started": task_started, "finished": task_finished}
    for name, signal in signals.items():
        signal.connect(receivers[name])
    try:
        ok, bad = tasks.add.enqueue(1), tasks.boom.enqueue("x")
        run_worker(tp.storage, concurrency=1)
    finally:
        for name, signal in signals.items():
            signal.disconnect(receivers[name])
    assert seen == [
        ("enqueued", ok.id, "READY"),
        ("enqueued", bad.id, "READY"),
        ("started", ok.id, "RUNNING"),
        ("finished", ok.id, "SUCCESSFUL"),
        ("started", bad.id, "RUNNING"),
        ("finished", bad.id, "FAILED"),
    ]


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_enqueue_on_commit(configure, outcome):
    tp = configure(ENQUEUE_ON_COMMIT=True)

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback) if outcome == "rollback" else _nothing():
        with transaction.atomic():
            result = tasks.record.enqueue("committed")
            assert result.id == "" and tp.storage.list_tasks() == []  # not yet
            if outcome == "rollback":
                raise Rollback
    if outcome == "commit":
        [info] = tp.storage.list_tasks()
        assert result.id == str(int(info.id))
    else:
        assert tp.storage.list_tasks() == [] and result.id == ""


def test_without_enqueue_on_commit_a_push_inside_atomic_is_immediate(tp):
    with transaction.atomic():
        result = tasks.record.enqueue("now")
        assert [int(i.id) for i in tp.storage.list_tasks()] == [int(result.id)]


def test_enqueue_on_commit_outside_a_transaction_pushes_at_once(configure):
    tp = configure(ENQUEUE_ON_COMMIT=True)
    result = tasks.record.enqueue("now")
    assert int(tp.storage.list_tasks()[0].id) == int(result.id)


def test_bad_settings_are_clear(configure):
    with pytest.raises(ImproperlyConfigured, match="'db'"):
        TaskpipeBackend("x", {"OPTIONS": {}})
    with pytest.raises(ImproperlyConfigured, match="unknown keys"):
        TaskpipeBackend("x", {"OPTIONS": {"db": "a.db", "dbs": 1}})
    with pytest.raises(ImproperlyConfigured, match="ENQUEUE_ON_COMMIT"):
        TaskpipeBackend("x", {"OPTIONS": {"db": "a.db"}, "ENQUEUE_ON_COMMIT": "yes"})
    with pytest.raises(ValueError, match="max_attempts"):
        TaskpipeBackend("x", {"OPTIONS": {"db": "a.db", "max_attempts": 0}})


def test_manage_py_taskpipe_worker_and_tasks(tmp_path, configure, capsys):
    # a fresh database: `manage.py taskpipe setup` creates the tables
    override = override_settings(
        TASKS=tasks_setting(str(tmp_path / "fresh.db"), QUEUES=["default", "emails"])
    )
    with override:
        call_command("taskpipe", "setup")
        tp = task_backends["default"]
        first = tasks.add.enqueue(1, 2)
        tasks.record.using(queue_name="emails").enqueue("mail")
        call_command("taskpipe", "worker", "--until-idle", "--quiet")
        assert "handled 1 task" in capsys.readouterr().out
        assert tasks.add.get_result(first.id).return_value == 3
        call_command("taskpipe", "worker", "--queue", "emails", "--until-idle")
        assert "handled 1 task" in capsys.readouterr().out
        assert tasks.ran == ["add 1 2", "mail"]
        call_command("taskpipe", "tasks", "--json")
        assert '"status": "done"' in capsys.readouterr().out
        assert tp.storage.stats(queue="default")["done"] == 1


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture(params=list(ENGINES))
def server_url(request):
    """A server's URL (skipped when its variable is unset); Redis with a prefix of the
    test's own, deleted after it. The tests use queues of their own on it."""
    url = engine_url(request.param, "run the Django backend on it")
    if request.param == "redis":
        url += ("&" if "?" in url else "?") + f"prefix=tp-django-{uuid.uuid4().hex[:12]}"
    store = taskpipe.open_storage(url)
    type(store).setup(store)
    yield url
    drop = getattr(store, "drop", None)
    if request.param == "redis" and drop is not None:
        drop()
        store.close()
    else:
        store.close_thread_connection()


def test_end_to_end_on_each_server(server_url, configure):
    queue = f"django-{uuid.uuid4().hex[:12]}"
    override = override_settings(
        TASKS={
            "default": {
                "BACKEND": "taskpipe.contrib.django.TaskpipeBackend",
                "OPTIONS": {"db": server_url, "queue": queue},
            }
        }
    )
    with override:
        tp = task_backends["default"]
        ok, failing = tasks.add.enqueue(40, b=2), tasks.boom.enqueue("on a server")
        assert tp.storage.queue == queue
        assert run_worker(tp.storage) == 2
        done = tasks.add.get_result(ok.id)
        assert (done.status, done.return_value, done.attempts) == (
            TaskResultStatus.SUCCESSFUL,
            42,
            1,
        )
        failed = tasks.boom.get_result(failing.id)
        assert failed.status == TaskResultStatus.FAILED
        assert failed.errors[0].exception_class_path == "django_support.Boom"
