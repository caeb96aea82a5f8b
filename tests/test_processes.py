"""``taskpipe worker --processes N`` and ``Supervisor``: a drain with a child SIGKILLed
and replaced, a graceful SIGTERM, the kill after the grace, children outliving a killed
supervisor, a crash loop's growing delays, and bad input.

The targets live in ``processes_app.py``; supervisors run as real processes (the CLI
in a subprocess) or in a thread of the test (the API). Every wait has a deadline."""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import processes_app
import pytest
from click.testing import CliRunner
from helpers import engine_url
from server_drain import until
from test_cli_servers import SERVERS, _place

import taskpipe
from taskpipe import BuildError, Supervisor
from taskpipe.cli import cli
from taskpipe.processes import _Slot
from taskpipe.sqlite import SqliteStorage, connect

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

TESTS = str(Path(__file__).resolve().parent)
REPO = str(Path(taskpipe.__file__).resolve().parent.parent)
TASKS = 5000
BLOCK_AT = 600  # the victim blocks on its 600th task, and is SIGKILLed there
LIMIT = 60.0
SLACK = 5.0  # what a busy machine may add to a deadline the supervisor promises


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A set-up SQLite file; ``PROCS_DB`` and ``PROCS_DIR`` point the targets at it."""
    path = tmp_path / "jobs.db"
    database = connect(str(path))
    SqliteStorage.setup(database)
    database.close()
    monkeypatch.setenv("PROCS_DB", str(path))
    monkeypatch.setenv("PROCS_DIR", str(tmp_path))
    return path


def storage(db: Path) -> Any:
    return SqliteStorage(connect(str(db)), config=processes_app.fast_config())


class Command:
    """``python -m taskpipe --db DB worker …`` in a subprocess, stderr to a file."""

    def __init__(self, db: Path | str, *args: str, **env: str):
        self.err_path = Path(env.pop("PROCS_DIR", os.environ["PROCS_DIR"])) / "supervisor.err"
        path = os.pathsep.join([TESTS, REPO, os.environ.get("PYTHONPATH", "")])
        environ = dict(os.environ, PYTHONPATH=path, **env)
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskpipe", "--db", str(db), "worker", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=environ,
            )

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the supervisor did not exit within {timeout}s:\n{self.stderr}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def runs(directory: Path) -> dict[int, list[int]]:
    """The task ids each process started (by pid; a torn last line is ignored)."""
    found = {}
    for path in directory.glob("runs-*.txt"):
        lines = path.read_text().splitlines(keepends=True)
        found[int(path.stem.split("-")[1])] = [int(x) for x in lines if x.endswith("\n")]
    return found


def pid_of(store: Any, name: str) -> int | None:
    """The pid of the live worker named ``name``, if one is registered."""
    pids = [w.pid for w in store.list_workers() if w.name == name]
    return pids[-1] if pids else None


# The drain --------------------------------------------------------------------------------
def test_two_processes_drain_every_task_once_while_one_is_killed_and_replaced(db, tmp_path):
    store = storage(db)
    ids = store.push_bulk(range(TASKS))
    command = Command(
        db, "processes_app:worker", "--processes", "2", "--quiet", PROCS_BLOCK_AT=str(BLOCK_AT)
    )
    try:
        blocked = tmp_path / "blocked"
        until(lambda: blocked.exists() and blocked.read_text().endswith("\n"), "a blocked task")
        victim, blocked_id = map(int, blocked.read_text().split())
        until(lambda: victim in {w.pid for w in store.list_workers()}, "the victim registered")
        victim_name = next(w.name for w in store.list_workers() if w.pid == victim)
        os.kill(victim, signal.SIGKILL)
        until(
            lambda: pid_of(store, victim_name) not in (None, victim),
            f"a new child running {victim_name}",
        )
        until(lambda: store.stats()["done"] == TASKS, "every task to be done")
        command.signal(signal.SIGTERM)
        assert command.wait(LIMIT) == 0, command.stderr
    finally:
        command.close()

    stats = store.stats()
    assert {k: stats[k] for k in ("pending", "running", "failed", "dead", "done")} == {
        "pending": 0,
        "running": 0,
        "failed": 0,
        "dead": 0,
        "done": TASKS,
    }
    assert f"(pid {victim}) was killed by SIGKILL" in command.stderr
    started = runs(tmp_path)
    assert len(started) >= 2 and victim in started
    count = collections.Counter(i for ids_run in started.values() for i in ids_run)
    assert set(count) == set(ids)
    # Each task ran once, except those the killed child had started: once there, and
    # once more after their recovery (at-least-once delivery), never more.
    twice = {task_id for task_id, n in count.items() if n > 1}
    assert max(count.values()) == 2
    assert blocked_id in twice
    assert twice <= set(started[victim])
    for task_id in twice:
        assert store.fetch_by_id(task_id).recoveries, f"task {task_id} ran twice, not recovered"


# Stopping ----------------------------------------------------------------------------------
def test_sigterm_lets_running_tasks_finish_then_exits_0(db, tmp_path):
    store = storage(db)
    store.push_bulk([1, 1])  # each works for 1 s
    command = Command(
        db, "processes_app:slow", "--processes", "2", "-c", "2", "--grace", "10s", "--quiet"
    )
    try:
        until(lambda: sum(map(len, runs(tmp_path).values())) == 2, "both tasks to start")
        command.signal(signal.SIGTERM)
        assert command.wait(10 + 1 + SLACK) == 0, command.stderr
    finally:
        command.close()
    assert store.stats()["done"] == 2  # drained, not handed back
    assert store.list_workers() == []  # every child retired its run


def test_a_child_still_running_after_the_grace_is_killed(db):
    store = storage(db)
    store.push(0)  # its handler leaves a thread that keeps the child from exiting
    command = Command(
        db, "processes_app:leave_a_thread", "--processes", "1", "--grace", "1s", "--quiet"
    )
    try:
        until(lambda: store.stats()["done"] == 1, "the task to be done")
        child = pid_of(store, "leave_a_thread-1")
        assert child is not None
        stopped_at = time.monotonic()
        command.signal(signal.SIGTERM)
        assert command.wait(1 + 1 + SLACK) == 1
        assert time.monotonic() - stopped_at >= 1  # the grace was given first
    finally:
        command.close()
    assert f"child 1 (pid {child}) still running" in command.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # killed and reaped


def test_children_drain_and_exit_when_their_supervisor_is_killed(db):
    store = storage(db)
    command = Command(db, "processes_app:slow", "--processes", "2", "--quiet")
    try:
        until(lambda: len(store.list_workers()) == 2, "two children running")
        command.signal(signal.SIGKILL)
        command.wait(LIMIT)
        until(lambda: store.list_workers() == [], "the children to stop and retire")
    finally:
        command.close()


# The API -----------------------------------------------------------------------------------
def run_in_thread(supervisor: Supervisor) -> tuple[threading.Thread, list[int]]:
    """Run ``supervisor`` in a thread (no signal handling there); its status lands in the list."""
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(supervisor.run()))
    thread.start()
    return thread, status


def test_a_factory_runs_in_children_named_after_their_slot(db):
    store = storage(db)
    store.push_bulk(range(40))
    supervisor = Supervisor(processes_app.build_worker, processes=2)
    thread, status = run_in_thread(supervisor)
    try:
        until(lambda: len(supervisor.pids) == 2, "two children")
        until(lambda: store.stats()["done"] == 40, "every task to be done")
    finally:
        supervisor.stop()
        thread.join(LIMIT)
    assert status == [0]
    assert supervisor.pids == []
    names = {task.result for task in store.list_tasks(limit=100)}
    assert names and names <= {"fac-1", "fac-2"}


def test_a_child_failing_at_import_is_restarted_with_doubling_delays(caplog):
    caplog.set_level(logging.INFO, logger="taskpipe.processes")
    supervisor = Supervisor(
        "processes_crash_app:worker", processes=1, restart_delay=0.1, max_restart_delay=10
    )

    def delays() -> list[float]:
        return [r.args[-1] for r in caplog.records if "restarting it in" in r.msg]

    thread, status = run_in_thread(supervisor)
    try:
        until(lambda: len(delays()) >= 3, "three restarts")
    finally:
        supervisor.stop()
        thread.join(LIMIT)
    assert delays()[:3] == [0.1, 0.2, 0.4]
    assert status == [1]  # stopped while its child was crash-looping


@pytest.mark.parametrize(
    ("target", "processes", "message"),
    [
        ("no_colon", 2, "expected MODULE:ATTR"),
        (lambda: None, 2, "cannot be sent to a child process"),
        (42, 2, "a MODULE:ATTR string or a function"),
        ("processes_app:worker", 0, "processes must be a positive int"),
        ("processes_app:worker", True, "processes must be a positive int"),
    ],
)
def test_bad_supervisor_arguments_are_refused(target, processes, message):
    with pytest.raises(BuildError, match=message):
        Supervisor(target, processes)


def test_bad_restart_delays_are_refused():
    with pytest.raises(BuildError, match="restart_delay"):
        Supervisor("processes_app:worker", 2, restart_delay=0)
    with pytest.raises(BuildError, match="restart_delay"):
        Supervisor("processes_app:worker", 2, restart_delay=5, max_restart_delay=1)
    with pytest.raises(BuildError, match="must not be negative"):
        Supervisor("processes_app:worker", 2, restart_delay=-1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "0"], "--processes"),
        (["--processes", "2", "--until-idle"], "drop --processes"),
        (["--processes", "2", "--metrics-port", "9100"], "--metrics-port serves one process"),
    ],
)
def test_bad_processes_options_exit_2(db, args, message):
    result = CliRunner().invoke(
        cli, ["--db", str(db), "worker", "processes_app:slow", *args], prog_name="taskpipe"
    )
    assert result.exit_code == 2
    assert message in result.output


def test_asked_to_stop_before_it_runs_it_starts_nothing():
    supervisor = Supervisor("processes_crash_app:worker", processes=2)
    supervisor.stop()
    assert supervisor.run() == 0
    assert supervisor.pids == []


class _DeadProcess:
    """What ``_reap`` sees of a child that has exited with status 1."""

    pid = 4242
    exitcode = 1

    def join(self) -> None:
        pass


def test_the_restart_delay_doubles_up_to_its_cap_and_resets_after_a_long_life(caplog):
    caplog.set_level(logging.WARNING, logger="taskpipe.processes")
    supervisor = Supervisor("m:a", 1, restart_delay=0.5, max_restart_delay=4)
    slot = _Slot(1)

    def crash(lived: float) -> float:
        slot.process, slot.started_at = _DeadProcess(), time.monotonic() - lived
        supervisor._reap(slot, stopping=False)
        return caplog.records[-1].args[-1]

    assert [crash(lived=0.1) for _ in range(5)] == [0.5, 1, 2, 4, 4]
    assert crash(lived=5) == 0.5  # it had run longer than the longest delay
    assert crash(lived=0.1) == 1
    assert slot.exitcode == 1 and slot.restart_at is not None


def test_a_store_never_set_up_exits_2_before_any_child_starts(tmp_path, monkeypatch):
    (tmp_path / "unset_app.py").write_text(
        "from taskpipe import WorkerBuilder\n"
        "from taskpipe.sqlite import SqliteStorage, connect\n"
        f"storage = SqliteStorage(connect({str(tmp_path / 'empty.db')!r}))\n"
        "worker = WorkerBuilder('unset').backend(storage).build(print)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(
        cli, ["worker", "unset_app:worker", "--processes", "2"], prog_name="taskpipe"
    )
    assert result.exit_code == 2
    assert "setup" in result.output


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> Any:
    """An empty place of this test's own on each server whose URL is set (else skip)."""
    base = engine_url(request.param, "run --processes on it")
    yield from _place(request.param, base)


def test_children_open_their_own_connection_to_a_server_store(server_url, tmp_path, monkeypatch):
    monkeypatch.setenv("PROCS_DIR", str(tmp_path))
    db = taskpipe.connect(server_url)  # a peewee database, or a Redis client
    store: Any = taskpipe.open_storage(db)
    type(store).setup(store)
    ids = store.push_bulk([0] * 40)
    command = Command(server_url, "processes_app:slow", "--processes", "2", "--quiet")
    try:
        until(lambda: store.stats()["done"] == 40, "every task to be done")
        command.signal(signal.SIGTERM)
        assert command.wait(LIMIT) == 0, command.stderr
    finally:
        command.close()
        db.close()
    count = collections.Counter(i for ran in runs(tmp_path).values() for i in ran)
    assert count == collections.Counter(int(i) for i in ids)


def test_the_cpu_bound_example_runs_in_two_processes(tmp_path):
    env = dict(os.environ, CPU_BOUND_DB=str(tmp_path / "jobs.db"))
    env["PYTHONPATH"] = os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "cpu_bound.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=LIMIT,
    )
    assert result.returncode == 0, result.stderr
    assert "supervisor exited 0" in result.stdout
    assert "'cpu-1'" in result.stdout or "'cpu-2'" in result.stdout


def push_doubles(db: Path, n: int) -> Any:
    """``n`` tasks for ``processes_app.router``'s ``double``, pushed by a router of our own."""
    store = storage(db)
    router = taskpipe.Router(store)

    @router.task(name="double")
    def double(x: int) -> list[Any]:
        raise AssertionError("runs in the children only")

    for i in range(n):
        double.push(i)
    return store


def test_a_router_runs_in_processes_from_the_command_line(db):
    store = push_doubles(db, 30)
    command = Command(db, "processes_app:router", "--processes", "2", "--quiet")
    try:
        until(lambda: store.stats()["done"] == 30, "every task to be done")
        command.signal(signal.SIGTERM)
        assert command.wait(LIMIT) == 0, command.stderr
    finally:
        command.close()
    results = [task.result for task in store.list_tasks(limit=100)]
    assert sorted(r[0] for r in results) == [2 * i for i in range(30)]
    assert {r[1] for r in results} <= {"default-1", "default-2"}


def test_a_supervisor_takes_a_router(db):
    store = push_doubles(db, 10)
    supervisor = Supervisor("processes_app:router", processes=2)
    thread, status = run_in_thread(supervisor)
    try:
        until(lambda: store.stats()["done"] == 10, "every task to be done")
    finally:
        supervisor.stop()
        thread.join(LIMIT)
    assert status == [0]
    assert sorted(t.result[0] for t in store.list_tasks(limit=100)) == [2 * i for i in range(10)]
