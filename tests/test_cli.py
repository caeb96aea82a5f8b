"""The ``taskpipe`` command: every command and its error paths through CliRunner, and one
real run in subprocesses (push, worker --until-idle, tasks --json)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner
from freezegun import freeze_time

import taskpipe
from taskpipe import Status, WorkerContext
from taskpipe import cli as cli_module
from taskpipe.cli import _ago, _table, cli, database_path, parse_duration
from taskpipe.expose import STATS_KEYS
from taskpipe.sqlite import SqliteStorage, connect

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TASKINFO_FIELDS = [
    "id",
    "queue",
    "status",
    "args",
    "priority",
    "run_at",
    "attempts",
    "max_attempts",
    "result",
    "errors",
    "created_at",
    "started_at",
    "done_at",
    "worker",
    "meta",
    "recoveries",
]


@pytest.fixture
def invoke(monkeypatch):
    """Run ``taskpipe ARGS…`` in-process; TASKPIPE_DB unset unless a test sets it."""
    monkeypatch.delenv("TASKPIPE_DB", raising=False)
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: dict | None = None, color: bool = False):
        return runner.invoke(
            cli, list(args), input=input, env=env, color=color, catch_exceptions=False
        )

    return run


@pytest.fixture
def dbfile(db_path, invoke):
    """A set-up database file; its path."""
    result = invoke("setup", "--db", db_path)
    assert result.exit_code == 0, result.output
    return db_path


@pytest.fixture
def storage(dbfile):
    """A storage on the CLI's database (the default queue)."""
    database = connect(dbfile)
    yield SqliteStorage(database)
    database.close()


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write a module into tmp_path (importable); forget it afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def bad_input(result, *words: str) -> None:
    """Exit 2 with one line on stderr that mentions ``words``, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.output


def failed(result, *words: str) -> None:
    """Exit 1 with the reason on stderr, and no traceback."""
    assert result.exit_code == 1, result.output
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.output


# Helpers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("5min", 300),
        ("12", 12),
        ("1.5", 1.5),
        (" 2H ", 7200),
        ("0", 0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10x", "m", "-5", "5 s x", "ten minutes", "nan"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "text, words",
    [
        ("nan", "finite"),
        ("inf", "finite"),
        ("-inf", "finite"),
        (float("inf"), "finite"),
        ("1e20", "100 years"),
        ("36600d", "100 years"),
        (1e300, "100 years"),
        (timedelta(days=40000), "100 years"),
        ("-1", "negative"),
    ],
)
def test_parse_duration_rejects_non_finite_and_absurd_durations(text, words):
    with pytest.raises(ValueError, match=words):
        parse_duration(text)
    assert parse_duration("36500d") == 36500 * 86400  # 100 years (less a few leap days) is fine


def test_parse_duration_takes_timedeltas_and_numbers():
    assert parse_duration(timedelta(minutes=2)) == 120 and parse_duration(3) == 3.0


@pytest.mark.parametrize(
    "when, text",
    [
        (T0, "just now"),
        (T0 - timedelta(seconds=5), "5 s ago"),
        (T0 - timedelta(minutes=3), "3 min ago"),
        (T0 + timedelta(minutes=10), "in 10 min"),
        (T0 - timedelta(hours=2), "2 h ago"),
        (T0 - timedelta(days=3), "3 d ago"),
        (None, "-"),
    ],
)
def test_relative_times(when, text):
    assert _ago(when, T0) == text


@pytest.mark.parametrize(
    "url, path",
    [
        ("jobs.db", "jobs.db"),
        ("sqlite:///jobs.db", "jobs.db"),
        ("sqlite:////tmp/x.db", "/tmp/x.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite://", ":memory:"),
    ],
)
def test_database_path(url, path):
    assert database_path(url) == path


def test_table_is_aligned():
    text = _table(["ID", "STATUS", "ARGS"], [["1", ("done", "green"), "a"], ["100", "dead", "bb"]])
    assert "\x1b[" in text  # styled; click.echo strips it when not a terminal
    lines = click.unstyle(text).splitlines()
    assert lines[0].index("STATUS") == lines[1].index("done") == lines[2].index("dead")
    assert lines[0].index("ARGS") == lines[1].index("a") == lines[2].index("bb")


# Global options ----------------------------------------------------------------------------------
def test_version(invoke):
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"taskpipe {taskpipe.__version__}"


def test_help_lists_the_commands(invoke):
    result = invoke("--help")
    assert result.exit_code == 0
    for command in [
        "setup",
        "worker",
        "push",
        "tasks",
        "show",
        "retry",
        "kill",
        "purge",
        "workers",
        "queues",
        "stats",
    ]:
        assert command in result.stdout
    assert "TASKPIPE_DB" in result.stdout


def test_db_before_or_after_the_command_or_from_the_environment(invoke, dbfile):
    invoke("--db", dbfile, "push", "1")
    invoke("push", "2", "--db", dbfile)
    invoke("push", "3", env={"TASKPIPE_DB": f"sqlite:///{dbfile}"})
    result = invoke("tasks", "--json", env={"TASKPIPE_DB": dbfile})
    assert [t["args"] for t in json.loads(result.stdout)] == [3, 2, 1]


def test_the_commands_db_wins(invoke, dbfile, tmp_path):
    other = str(tmp_path / "other.db")
    invoke("setup", "--db", other)
    invoke("--db", dbfile, "push", "1", "--db", other)
    assert json.loads(invoke("tasks", "--json", "--db", dbfile).stdout) == []
    assert len(json.loads(invoke("tasks", "--json", env={"TASKPIPE_DB": other}).stdout)) == 1


def test_no_database_given(invoke):
    bad_input(invoke("tasks"), "--db", "TASKPIPE_DB")


def test_a_missing_database_file_is_not_created(invoke, tmp_path):
    path = tmp_path / "nope.db"
    result = invoke("tasks", "--db", str(path))
    bad_input(result, f"no taskpipe database at {path}", "taskpipe setup")
    result = invoke("push", "1", "--db", f"sqlite:///{path}")
    bad_input(result, "no taskpipe database at", "does not exist")
    assert os.listdir(tmp_path) == []


def test_missing_tables_say_to_run_setup(invoke, tmp_path):
    path = tmp_path / "empty.db"
    bare = connect(str(path))  # a SQLite file without taskpipe's tables
    bare.connect()
    bare.close()
    bad_input(invoke("stats", "--db", str(path)), "taskpipe setup")


def test_a_file_that_is_not_a_database(invoke, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not SQLite" * 100)
    before = snapshot(tmp_path)
    bad_input(invoke("tasks", "--db", str(path)), "not a database")
    bad_input(invoke("setup", "--db", str(path)), "not a database")
    assert snapshot(tmp_path) == before


# A file --db names is looked at read-only first: one it refuses is left as it was.
def snapshot(directory) -> dict[str, str]:
    """Every file in ``directory``: its name and the sha256 of its bytes."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


COMMANDS_ON_A_DATABASE = [
    ["tasks"],
    ["push", "1"],
    ["show", "1"],
    ["retry", "1"],
    ["kill", "1"],
    ["purge", "done", "--older-than", "0"],
    ["stats"],
    ["workers"],
    ["queues"],
    ["worker", "refused_handlers:handler", "--until-idle"],
]


@pytest.fixture
def refused_handlers(modules):
    modules("refused_handlers", "def handler(args):\n    return args\n")


@pytest.fixture
def data(tmp_path):
    """A directory for database files only."""
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def foreign_database(path, journal_mode: str) -> None:
    """Another application's SQLite database: its own table, one row."""
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal_mode}")
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users (name) VALUES ('ada')")
    db.commit()
    db.close()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
@pytest.mark.parametrize("command", [["setup"], *COMMANDS_ON_A_DATABASE], ids=lambda c: c[0])
def test_another_applications_database_is_refused_and_left_as_it_was(
    invoke, data, refused_handlers, journal_mode, command
):
    path = data / "app.db"
    foreign_database(path, journal_mode)
    before = snapshot(data)
    assert list(before) == ["app.db"]  # no -wal or -journal file beside it
    bad_input(invoke(*command, "--db", str(path)), f"{path}", "another application's", "users")
    assert snapshot(data) == before  # the same bytes, and no -wal, -shm or -journal file
    with closing(sqlite3.connect(path)) as db, db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == journal_mode


def test_setup_tells_how_to_use_another_file(invoke, data):
    path = data / "app.db"
    foreign_database(path, "delete")
    bad_input(invoke("setup", "--db", str(path)), "pick a new file for --db")


@pytest.mark.parametrize("command", COMMANDS_ON_A_DATABASE, ids=lambda c: c[0])
def test_an_empty_file_is_refused_and_left_as_it_was(invoke, data, refused_handlers, command):
    path = data / "empty.db"
    path.touch()
    result = invoke(*command, "--db", str(path))
    bad_input(result, "is an empty file", f"taskpipe setup --db {path}")
    assert snapshot(data) == {"empty.db": hashlib.sha256(b"").hexdigest()}


def test_a_database_without_tables_is_refused_and_left_as_it_was(invoke, data):
    path = data / "blank.db"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA user_version = 7")  # a SQLite file, no tables
    before = snapshot(data)
    bad_input(invoke("stats", "--db", str(path)), "no taskpipe tables", "taskpipe setup")
    assert snapshot(data) == before


@pytest.mark.parametrize("kind", ["empty file", "database without tables"])
def test_setup_makes_an_empty_file_a_taskpipe_database(invoke, data, kind):
    path = data / "jobs.db"
    if kind == "empty file":
        path.touch()
    else:
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("PRAGMA user_version = 7")
    assert invoke("setup", "--db", str(path)).exit_code == 0
    assert invoke("push", "1", "--db", str(path)).exit_code == 0
    assert invoke("stats", "--json", "--db", str(path)).stdout.count('"pending": 1') == 1


def test_a_damaged_database_is_refused_and_left_as_it_was(invoke, data):
    whole = data / "whole.db"
    foreign_database(whole, "delete")
    damaged = data / "damaged.db"
    damaged.write_bytes(whole.read_bytes()[:100])  # the header, and no page after it
    whole.unlink()
    before = snapshot(data)
    for command in ("setup", "tasks"):
        bad_input(invoke(command, "--db", str(damaged)), "cannot read", "as a SQLite database")
    assert snapshot(data) == before


def test_a_database_in_use_is_read_with_its_wal(invoke, data):
    """Another process holds the store open: its tables may be in the -wal file only."""
    path = data / "busy.db"
    db = connect(str(path))
    SqliteStorage.setup(db)
    SqliteStorage(db).push("fresh")
    try:
        assert (data / "busy.db-wal").stat().st_size > 0
        with (
            closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as main_file_only,
            main_file_only,
        ):
            assert main_file_only.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
        result = invoke("tasks", "--json", "--db", str(path))
        assert result.exit_code == 0, result.output
        assert [t["args"] for t in json.loads(result.stdout)] == ["fresh"]
    finally:
        db.close()


@pytest.mark.parametrize(
    "db, words",
    [
        ("a\x00b.db", ["NUL"]),
        ("~no_such_user_taskpipe/jobs.db", ["~no_such_user_taskpipe"]),
        ("x" * 5000 + ".db", ["cannot read", "too long"]),
    ],
    ids=["NUL", "unknown user", "long name"],
)
def test_database_paths_that_cannot_name_a_file(invoke, db, words):
    for command in ("setup", "tasks"):
        bad_input(invoke(command, "--db", db), *words)


def test_a_device_or_a_pipe_is_not_a_database(invoke, tmp_path):
    os.mkfifo(tmp_path / "db.fifo")  # never opened: reading it would wait for a writer
    for path in (os.devnull, str(tmp_path / "db.fifo")):
        for command in ("setup", "tasks"):
            bad_input(invoke(command, "--db", path), f"{path} is not a regular file")


def test_a_path_through_a_file(invoke, tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    through_a_file = str(tmp_path / "notes.txt" / "jobs.db")
    bad_input(invoke("tasks", "--db", through_a_file), "cannot read", "Not a directory")


def test_a_non_utf8_database_path_works(invoke, tmp_path):
    path = os.path.join(os.fsdecode(tmp_path), os.fsdecode(b"caf\xe9.db"))
    result = invoke("setup", "--db", path)
    assert result.exit_code == 0 and "caf\\xe9.db" in result.stdout
    assert invoke("push", "1", "--db", path).exit_code == 0
    assert os.path.exists(path)


def test_a_directory_is_not_a_database(invoke, tmp_path):
    bad_input(invoke("tasks", "--db", str(tmp_path)), "directory")


@pytest.mark.parametrize(
    "url", ["postgresql://u@h/jobs", "postgres://h/jobs", "mysql://h/j", "redis://h:6379/0"]
)
def test_server_urls_are_not_sqlite_paths(url):
    assert database_path(url) is None  # taskpipe.connect opens them (tests/test_cli_servers.py)


def test_unknown_url_schemes(invoke):
    result = invoke("tasks", "--db", "oracle://scott:tiger-pw@h/jobs")
    bad_input(result, "unknown database URL scheme oracle://", "sqlite://", "postgresql://")
    assert "tiger-pw" not in result.output
    bad_input(invoke("tasks", "--db", "postgresql+psycopg://h/jobs"), "unknown", "redis://")
    bad_input(invoke("tasks", "--db", "sqlite:///jobs.db?timeout=3"), "options")


# setup ----------------------------------------------------------------------------------------------
def test_setup_creates_the_file_and_is_idempotent(invoke, tmp_path):
    path = tmp_path / "new.db"
    for _ in range(2):
        result = invoke("setup", "--db", f"sqlite:///{path}")
        assert result.exit_code == 0 and "ready" in result.stdout
    assert path.exists()
    assert invoke("stats", "--db", str(path)).exit_code == 0


def test_setup_in_a_missing_directory(invoke, tmp_path):
    bad_input(invoke("setup", "--db", str(tmp_path / "no" / "such" / "dir.db")), "directory")


# push -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["push", "1", "--run-after", "inf"], ["--run-after", "finite"]),
        (["push", "1", "--run-after", "nan"], ["--run-after", "finite"]),
        (["push", "1", "--run-after", "1e20"], ["--run-after", "100 years"]),
        (["push", "1", "--run-after", "10x"], ["--run-after", "not a duration"]),
        (["push", "1", "--priority", "99999999999999999999"], ["--priority", "out of range"]),
        (["push", "1", "--priority", "-9223372036854775809"], ["--priority", "out of range"]),
        (
            ["push", "1", "--max-attempts", "9223372036854775808"],
            ["--max-attempts", "out of range"],
        ),
        (["show", "99999999999999999999"], ["task id", "out of range"]),
        (["retry", "99999999999999999999"], ["task id", "out of range"]),
        (["kill", "99999999999999999999"], ["task id", "out of range"]),
        (["tasks", "--limit", "99999999999999999999"], ["--limit", "out of range"]),
        (["tasks", "--offset", "99999999999999999999"], ["--offset", "out of range"]),
        (["purge", "done", "--older-than", "inf"], ["--older-than", "finite"]),
        (["push", "1", "--priority", "9" * 5000], ["--priority", "(5000 characters)", "range"]),
        (["push", "1", "--max-attempts", "-" + "9" * 5000], ["--max-attempts", "out of range"]),
        (["show", "1" * 5000], ["task id", "out of range"]),
        (["push", "1", "--run-after", "9" * 400], ["--run-after", "100 years"]),
        (["push", "1", "--run-after", "9" * 400 + "s"], ["--run-after", "100 years"]),
    ],
)
def test_out_of_range_numbers_are_bad_input(invoke, dbfile, storage, args, words):
    bad_input(invoke(*args, "--db", dbfile), *words)  # not an OverflowError traceback
    assert storage.stats()["pending"] == 0


def test_the_largest_numbers_sqlite_takes_are_accepted(invoke, dbfile, storage):
    result = invoke(
        "push",
        "1",
        "--priority",
        "-9223372036854775808",
        "--max-attempts",
        "9223372036854775807",
        "--db",
        dbfile,
    )
    assert result.exit_code == 0, result.output
    info = storage.fetch_by_id(1)
    assert (info.priority, info.max_attempts) == (-(2**63), 2**63 - 1)
    result = invoke(
        "tasks", "--limit", "9223372036854775806", "--offset", "9223372036854775807", "--db", dbfile
    )
    assert result.exit_code == 0, result.output
    bad_input(invoke("show", "9223372036854775807", "--db", dbfile), "no task with id")


def test_push_json_args(invoke, dbfile, storage):
    result = invoke("push", '{"to": "a@example.com"}', "--db", dbfile)
    assert result.exit_code == 0 and result.stdout.strip() == "pushed task 1 to queue default"
    info = storage.fetch_by_id(1)
    assert info.args == {"to": "a@example.com"} and info.priority == 0 and info.max_attempts is None


def test_push_with_options(invoke, dbfile, storage):
    with freeze_time(T0):
        result = invoke(
            "push",
            "[1, 2]",
            "--queue",
            "maps",
            "--priority",
            "5",
            "--run-after",
            "10m",
            "--max-attempts",
            "3",
            "--json",
            "--db",
            dbfile,
        )
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"id": 1, "queue": "maps"}
    info = storage.fetch_by_id(1)
    assert (info.queue, info.args, info.priority, info.max_attempts) == ("maps", [1, 2], 5, 3)
    assert info.run_at == T0 + timedelta(minutes=10)


@pytest.mark.parametrize("args", ["{bad", "", "[1,", "nope"])
def test_push_bad_json(invoke, dbfile, storage, args):
    bad_input(invoke("push", args, "--db", dbfile), "not valid JSON")
    assert storage.stats()["pending"] == 0


def test_push_needs_args_or_a_file(invoke, dbfile, tmp_path):
    bad_input(invoke("push", "--db", dbfile), "JSON")
    lines = tmp_path / "t.jsonl"
    lines.write_text("1\n")
    bad_input(invoke("push", "1", "--file", str(lines), "--db", dbfile), "not both")


@pytest.mark.parametrize(
    "option", [["--run-after", "10x"], ["--max-attempts", "0"], ["--priority", "high"]]
)
def test_push_bad_options_are_usage_errors(invoke, dbfile, option):
    bad_input(invoke("push", "1", *option, "--db", dbfile), option[0])


@pytest.mark.parametrize(
    "args, words",
    [
        (["tasks", "--limit", "x"], ["'--limit'", "not a valid int", "'taskpipe tasks --help'"]),
        (["show"], ["Missing argument 'ID'", "(see 'taskpipe show --help')"]),
        (["tasks", "--status", "finished"], ["'finished' is not one of", "'pending'"]),
        (["purge", "done"], ["Missing option '--older-than'"]),
        (["stats", "--bogus"], ["No such option '--bogus'"]),
        (["taks"], ["No such command 'taks'", "(see 'taskpipe --help')"]),
        (["--bogus", "tasks"], ["No such option '--bogus'", "(see 'taskpipe --help')"]),
    ],
)
def test_usage_errors_are_one_line(args, words, monkeypatch):
    """click's own errors (usage, a hint, a blank line, the error) come as one line too."""
    monkeypatch.delenv("TASKPIPE_DB", raising=False)
    result = CliRunner().invoke(cli, args, prog_name="taskpipe")
    bad_input(result, *words)
    assert "Usage:" not in result.output


def test_a_usage_error_cuts_a_long_value(invoke, dbfile):
    result = invoke("tasks", "--status", "x" * 10_000, "--db", dbfile)
    bad_input(result, "--status", "is not one of", "'dead'")
    assert len(result.stderr) < 500


def test_a_bare_taskpipe_still_shows_the_help(invoke):
    result = invoke()
    assert result.exit_code in (0, 2)  # 2 since click 8.2
    assert "Commands:" in result.output and "Error" not in result.output


@pytest.mark.parametrize(
    "args, words",
    [
        ("1" * 5000, ["ARGS", "5000 digits", "pass it as a string"]),
        ("[" * 100_000 + "]" * 100_000, ["ARGS", "nested more than 200 levels deep"]),
        ("[" * 201 + "]" * 201, ["ARGS", "nested more than 200 levels deep"]),
        ('{"a": [{"b": NaN}]}', ["ARGS", "NaN is not a JSON number"]),
        ("Infinity", ["Infinity is not a JSON number"]),
        ("[-Infinity]", ["-Infinity is not a JSON number"]),
        ("1e400", ["1e400", "too large"]),
        ('{"k": "\\ud800"}', ["ARGS", "lone surrogate"]),
        ('{"\\udfff": 1}', ["ARGS", "lone surrogate"]),
        (os.fsdecode(b'"caf\xe9"'), ["ARGS is not valid UTF-8"]),
    ],
    ids=[
        "huge int",
        "deep",
        "201 levels",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "surrogate",
        "surrogate key",
        "latin-1",
    ],
)
def test_push_refuses_json_it_cannot_store_faithfully(invoke, dbfile, storage, args, words):
    """Python reads NaN, Infinity and 1e400 (inf) as JSON, and the store would keep them as
    null; a 5000-digit integer or deep nesting made a traceback."""
    bad_input(invoke("push", args, "--db", dbfile), *words)
    assert storage.stats()["pending"] == 0


def test_push_takes_json_up_to_the_depth_limit_and_shows_it(invoke, dbfile, storage):
    depth = cli_module.MAX_JSON_DEPTH
    deep = "[" * depth + "]" * depth
    deep_object = '{"a": ' * depth + "1" + "}" * depth
    for args in (deep, deep_object, "9" * 4000):
        assert invoke("push", args, "--db", dbfile).exit_code == 0
    for command in (["tasks"], ["tasks", "--json"], ["show", "1"], ["show", "2", "--json"]):
        result = invoke(*command, "--db", dbfile)
        assert result.exit_code == 0 and cli_module.TOO_DEEP not in result.stdout
    assert storage.fetch_by_id(3).args == int("9" * 4000)


def test_args_too_deep_to_show_stored_by_code(invoke, dbfile, storage):
    """Code may push what the command line refuses: tasks and show still work."""
    deep = []
    for _ in range(900):
        deep = [deep]
    storage.push(deep)
    storage.push({"fine": True})
    note = cli_module.TOO_DEEP
    shown = invoke("show", "1", "--db", dbfile)
    assert shown.exit_code == 0 and f"args      {json.dumps(note)}" in shown.stdout
    listed = invoke("tasks", "--db", dbfile)
    assert listed.exit_code == 0
    assert note[:20] in listed.stdout and '{"fine": true}' in listed.stdout
    both = json.loads(invoke("tasks", "--json", "--db", dbfile).stdout)
    assert [t["args"] for t in both] == [{"fine": True}, note]
    assert list(both[1]) == TASKINFO_FIELDS and both[1]["status"] == "pending"
    assert json.loads(invoke("show", "1", "--json", "--db", dbfile).stdout)["args"] == note


def test_push_a_file_of_json_lines(invoke, dbfile, storage, tmp_path):
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("\n".join(json.dumps({"n": i}) for i in range(2500)) + "\n\n")
    result = invoke("push", "--file", str(lines), "--priority", "2", "--db", dbfile)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "pushed 2500 tasks to queue default"
    assert storage.stats()["pending"] == 2500
    [newest] = storage.list_tasks(limit=1)
    assert newest.args == {"n": 2499} and newest.priority == 2


def test_push_a_file_with_a_bad_line_pushes_nothing(invoke, dbfile, storage, tmp_path):
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("1\n2\n{oops\n4\n")
    bad_input(invoke("push", "-f", str(lines), "--db", dbfile), "line 3", "not valid JSON")
    assert storage.stats()["pending"] == 0


def test_push_from_stdin(invoke, dbfile, storage):
    result = invoke("push", "--file", "-", "--json", "--db", dbfile, input='"a"\n"b"\n')
    assert result.exit_code == 0 and json.loads(result.stdout) == {"count": 2, "queue": "default"}
    bad_input(invoke("push", "-f", "-", "--db", dbfile, input='"c"\n{\n'), "line 2 of stdin")
    assert storage.stats()["pending"] == 2  # the bad line's batch is not pushed


def test_push_a_missing_file(invoke, dbfile, tmp_path):
    bad_input(
        invoke("push", "--file", str(tmp_path / "none.jsonl"), "--db", dbfile), "does not exist"
    )


@pytest.mark.parametrize(
    "content, words",
    [
        (b'1\n"caf\xe9"\n', ["line 2 of", "not valid UTF-8", "0xe9 at column 5"]),
        (b"1\n" + b"2" * 5000 + b"\n", ["line 2 of", "5000 digits"]),
        (b"1\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n", ["line 2 of", "nested more than 200"]),
        (b'1\n{"a": NaN}\n', ["line 2 of", "NaN is not a JSON number"]),
        (b'1\n"\\ud800"\n', ["line 2 of", "lone surrogate"]),
    ],
    ids=["latin-1", "huge int", "deep", "NaN", "surrogate"],
)
def test_push_a_file_with_a_line_it_cannot_take_pushes_nothing(
    invoke, dbfile, storage, tmp_path, content, words
):
    lines = tmp_path / "tasks.jsonl"
    lines.write_bytes(content)
    bad_input(invoke("push", "--file", str(lines), "--db", dbfile), *words)
    assert storage.stats()["pending"] == 0


def test_push_a_file_that_cannot_be_read(invoke, dbfile, tmp_path):
    """Unreadable even for root: a directory, a path through a file, a name too long."""
    (tmp_path / "notes.txt").write_text("1\n")
    bad_input(invoke("push", "--file", str(tmp_path), "--db", dbfile), "is a directory", "--file")
    through_a_file = str(tmp_path / "notes.txt" / "x")
    bad_input(invoke("push", "--file", through_a_file, "--db", dbfile), "Not a directory")
    bad_input(invoke("push", "--file", "y" * 5000, "--db", dbfile), "cannot read", "too long")
    bad_input(invoke("push", "--file", "a\nb", "--db", dbfile), "'a\\nb' does not exist")


def test_push_a_file_with_a_byte_order_mark(invoke, dbfile, storage, tmp_path):
    lines = tmp_path / "tasks.jsonl"
    lines.write_bytes(b'\xef\xbb\xbf{"n": 1}\r\n{"n": 2}\r\n')
    assert invoke("push", "--file", str(lines), "--db", dbfile).exit_code == 0
    assert [t.args for t in storage.list_tasks()] == [{"n": 2}, {"n": 1}]


def test_push_from_a_pipe(invoke, dbfile, storage, tmp_path):
    """``--file <(make_tasks)`` names a pipe: read once, like stdin."""
    fifo = tmp_path / "tasks.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(b"1\n2\n3\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        result = invoke("push", "--file", str(fifo), "--db", dbfile)
    finally:
        if writer.is_alive():  # the command never opened the pipe: unblock the writer
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            writer.join(timeout=10)
            os.close(reader)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "pushed 3 tasks to queue default"
    assert storage.stats()["pending"] == 3


def test_push_a_file_writes_only_errors_to_stderr_when_not_a_terminal(invoke, dbfile, tmp_path):
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("1\n2\n")
    result = invoke("push", "--file", str(lines), "--db", dbfile)
    assert result.exit_code == 0 and result.stderr == ""  # no progress bar label in logs


NON_UTF8 = os.fsdecode(b"caf\xe9")  # a latin-1 argument, as Python hands it over
WORKER = ["worker", "names_handlers:h", "--until-idle"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["push", "1", "--queue", ""], ["cannot be empty", "leave out --queue for the default"]),
        (["push", "1", "--queue", NON_UTF8], ["--queue", "caf\\xe9", "not valid UTF-8"]),
        (["tasks", "--queue", ""], ["cannot be empty", "leave out --queue for every queue"]),
        (["tasks", "--queue", NON_UTF8], ["--queue", "not valid UTF-8"]),
        (["retry", "--dead", "--queue", ""], ["--queue", "cannot be empty"]),
        (["retry", "--dead", "--queue", NON_UTF8], ["--queue", "not valid UTF-8"]),
        (["purge", "dead", "--older-than", "0", "--queue", ""], ["--queue", "cannot be empty"]),
        (["stats", "--queue", ""], ["--queue", "cannot be empty"]),
        (["stats", "--queue", NON_UTF8], ["--queue", "not valid UTF-8"]),
        ([*WORKER, "--queue", ""], ["--queue", "cannot be empty"]),
        ([*WORKER, "--queue", NON_UTF8], ["--queue", "not valid UTF-8"]),
        ([*WORKER, "--name", ""], ["--name", "cannot be empty"]),
        ([*WORKER, "--name", NON_UTF8], ["--name", "not valid UTF-8"]),
    ],
)
def test_queue_and_worker_names_must_be_text(invoke, dbfile, storage, modules, args, words):
    modules("names_handlers", "def h(x):\n    return x\n")
    storage.kill(storage.push(1))
    bad_input(invoke(*args, "--db", dbfile), *words)
    assert storage.stats()["dead"] == 1 and storage.list_workers() == []


# tasks and show ---------------------------------------------------------------------------------------
def test_tasks_table(invoke, dbfile, storage):
    storage.push({"to": "a"})
    storage.kill(storage.push("x" * 200))
    result = invoke("tasks", "--db", dbfile)
    assert result.exit_code == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "ID",
        "QUEUE",
        "STATUS",
        "ATTEMPTS",
        "PRIO",
        "CREATED",
        "DUE/ENDED",
        "ARGS",
    ]
    assert rows[0].split()[:3] == ["2", "default", "dead"]
    assert rows[1].split()[:3] == ["1", "default", "pending"]
    assert header.index("STATUS") == rows[0].index("dead") == rows[1].index("pending")
    assert "…" in rows[0] and len(rows[0]) < 150  # long args are cut
    assert "\x1b[" not in result.stdout  # no colour when not a terminal


def test_colour_on_a_terminal(invoke, dbfile, storage):
    storage.kill(storage.push(1))
    result = invoke("tasks", "--db", dbfile, color=True)
    assert click.style("dead", fg="red") in result.stdout
    assert "\x1b[" not in invoke("tasks", "--json", "--db", dbfile, color=True).stdout


def test_tasks_filters_and_pages(invoke, dbfile, storage):
    ids = storage.push_bulk(range(5))
    storage.kill(ids[0])
    SqliteStorage(storage.db, queue="maps").push("m")
    dead = json.loads(invoke("tasks", "--status", "dead", "--json", "--db", dbfile).stdout)
    assert [t["id"] for t in dead] == [ids[0]]
    both = json.loads(
        invoke(
            "tasks", "-s", "dead", "-s", "pending", "-q", "default", "--json", "--db", dbfile
        ).stdout
    )
    assert len(both) == 5
    maps = json.loads(invoke("tasks", "--queue", "maps", "--json", "--db", dbfile).stdout)
    assert [t["args"] for t in maps] == ["m"]
    result = invoke("tasks", "--limit", "2", "--db", dbfile)
    assert len(result.stdout.splitlines()) == 3 and "--offset 2" in result.stderr
    page = json.loads(
        invoke("tasks", "--limit", "2", "--offset", "4", "--json", "--db", dbfile).stdout
    )
    assert [t["id"] for t in page] == [ids[1], ids[0]]


def test_tasks_json_has_the_taskinfo_fields(invoke, dbfile, storage):
    with freeze_time(T0):
        storage.push({"a": 1})
    [task] = json.loads(invoke("tasks", "--json", "--db", dbfile).stdout)
    assert list(task) == TASKINFO_FIELDS
    assert task["status"] == "pending" and task["created_at"] == "2026-03-01T12:00:00+00:00"


def test_tasks_when_there_are_none(invoke, dbfile):
    assert invoke("tasks", "--db", dbfile).stdout.strip() == "no tasks"
    assert json.loads(invoke("tasks", "--json", "--db", dbfile).stdout) == []
    result = invoke("tasks", "--status", "finished", "--db", dbfile)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_show_a_task_with_its_attempts(invoke, dbfile, storage, modules):
    modules(
        "showmod",
        """
        def boom(x):
            raise RuntimeError("it broke: " + str(x))
    """,
    )
    task_id = storage.push({"n": 1})
    invoke("worker", "showmod:boom", "--until-idle", "--db", dbfile)
    result = invoke("show", str(task_id), "--db", dbfile)
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith(f"task {task_id}  dead  (queue default)")
    assert '{"n": 1}' in out and "attempts  1" in out
    assert "attempt 1" in out and "RuntimeError: it broke: {'n': 1}" in out
    assert (
        "Traceback (most recent call last)" in out and "showmod.py" in out
    )  # the task's own traceback
    for label in ("created", "due", "started", "finished", "ran", "worker"):
        assert f"  {label}" in out


def test_show_json(invoke, dbfile, storage):
    storage.kill(storage.push([1, 2]))
    data = json.loads(invoke("show", "1", "--json", "--db", dbfile).stdout)
    assert list(data) == TASKINFO_FIELDS
    assert data["status"] == "dead" and data["args"] == [1, 2]
    assert data["errors"][0]["error"] == "killed"


def test_show_raw_payload(invoke, dbfile):
    database = connect(dbfile)
    SqliteStorage(database, codec=taskpipe.MsgPackCodec).push({"a": 1})
    database.close()
    assert "not decodable" in invoke("show", "1", "--db", dbfile).stdout
    data = json.loads(invoke("show", "1", "--json", "--db", dbfile).stdout)
    assert isinstance(data["args"], str)  # base64 of the payload


def test_show_unknown_or_bad_id(invoke, dbfile):
    bad_input(invoke("show", "99", "--db", dbfile), "no task with id 99")
    result = invoke("show", "abc", "--db", dbfile)
    assert result.exit_code == 2 and "Traceback" not in result.output


# retry, kill, purge ----------------------------------------------------------------------------------
def test_retry_and_kill(invoke, dbfile, storage):
    a, b = storage.push_bulk([1, 2])
    result = invoke("kill", str(a), str(b), "--db", dbfile)
    assert result.exit_code == 0 and result.stdout.splitlines() == [
        f"task {a} killed",
        f"task {b} killed",
    ]
    failed(invoke("kill", str(a), "--db", dbfile), f"task {a} is already dead")
    result = invoke("retry", str(a), "--db", dbfile)
    assert result.exit_code == 0 and result.stdout.strip() == f"task {a} is pending again"
    assert storage.fetch_by_id(a).status is Status.PENDING
    failed(invoke("retry", str(a), "--db", dbfile), "is pending: only failed or dead")


def test_retry_and_kill_unknown_ids(invoke, dbfile):
    bad_input(invoke("retry", "41", "--db", dbfile), "no task with id 41")
    bad_input(invoke("kill", "41", "--db", dbfile), "no task with id 41")
    result = invoke("kill", "--db", dbfile)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_retry_dead(invoke, dbfile, storage):
    for task_id in storage.push_bulk([1, 2, 3]):
        storage.kill(task_id)
    SqliteStorage(storage.db, queue="maps").kill(SqliteStorage(storage.db, queue="maps").push(4))
    assert (
        invoke("retry", "--dead", "--queue", "maps", "--db", dbfile).stdout.strip()
        == "1 dead task pending again"
    )
    assert invoke("retry", "--dead", "--db", dbfile).stdout.strip() == "3 dead tasks pending again"
    assert storage.stats()["pending"] == 4


def test_retry_needs_ids_or_dead(invoke, dbfile):
    bad_input(invoke("retry", "--db", dbfile), "--dead")
    bad_input(invoke("retry", "1", "--dead", "--db", dbfile), "--dead")


def test_purge(invoke, dbfile, storage):
    with freeze_time(T0) as frozen:
        ids = storage.push_bulk([1, 2, 3])
        for task_id in ids[:2]:
            storage.kill(task_id)
        frozen.tick(3 * 86400)
        result = invoke("purge", "dead", "done", "--older-than", "2d", "--db", dbfile)
        assert result.exit_code == 0 and result.stdout.strip() == "purged 2 tasks"
        assert (
            invoke("purge", "dead", "--older-than", "0", "--db", dbfile).stdout.strip()
            == "purged 0 tasks"
        )
    assert storage.stats()["pending"] == 1


def test_purge_refuses_unfinished_and_needs_an_age(invoke, dbfile):
    bad_input(
        invoke("purge", "pending", "--older-than", "1d", "--db", dbfile), "finished tasks only"
    )
    result = invoke("purge", "done", "--db", dbfile)
    assert result.exit_code == 2 and "--older-than" in result.stderr


# workers, queues, stats ---------------------------------------------------------------------------------
def test_workers(invoke, dbfile, storage):
    assert invoke("workers", "--db", dbfile).stdout.strip() == "no workers"
    ctx = WorkerContext("mailer", capacity=1, report=lambda exc: None)
    storage.beat(ctx)
    result = invoke("workers", "--db", dbfile)
    header, row = result.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "RUN", "ID"]
    assert row.split()[:3] == ["mailer", ctx.run_id, "default"]
    [data] = json.loads(invoke("workers", "--json", "--db", dbfile).stdout)
    assert (
        data["run_id"] == ctx.run_id and data["tasks_held"] == 0 and data["queues"] == ["default"]
    )
    assert data["pid"] == os.getpid()


def test_queues(invoke, dbfile, storage):
    assert "no queues" in invoke("queues", "--db", dbfile).stdout
    storage.push_bulk([1, 2])
    SqliteStorage(storage.db, queue="maps").kill(SqliteStorage(storage.db, queue="maps").push(4))
    header, *rows = invoke("queues", "--db", dbfile).stdout.splitlines()
    assert header.split() == [
        "QUEUE",
        "PENDING",
        "RUNNING",
        "DONE",
        "FAILED",
        "DEAD",
        "TOTAL",
        "PAUSED",
    ]
    assert [r.split() for r in rows] == [
        ["default", "2", "0", "0", "0", "0", "2", "no"],
        ["maps", "0", "0", "0", "0", "1", "1", "no"],
    ]
    data = json.loads(invoke("queues", "--json", "--db", dbfile).stdout)
    assert data[1] == {
        "name": "maps",
        "pending": 0,
        "running": 0,
        "done": 0,
        "failed": 0,
        "dead": 1,
        "other": 0,
        "total": 1,
        "paused": False,
    }


def test_stats(invoke, dbfile, storage):
    with freeze_time(T0) as frozen:
        storage.push_bulk([1, 2])
        frozen.tick(90)
        result = invoke("stats", "--db", dbfile)
        data = json.loads(invoke("stats", "--json", "--db", dbfile).stdout)
        maps = json.loads(invoke("stats", "--json", "--queue", "maps", "--db", dbfile).stdout)
    assert result.exit_code == 0
    assert (
        "queue: all" in result.stdout
        and "oldest due pending" in result.stdout
        and "1 min" in result.stdout
    )
    assert list(data) == list(STATS_KEYS)
    assert (
        data["pending"] == 2 and data["oldest_pending_age"] == 90 and data["mean_run_time"] is None
    )
    assert maps["pending"] == 0


def test_stats_watch_refreshes_until_interrupted(invoke, dbfile, storage, monkeypatch):
    pauses = []

    def pause(seconds):
        pauses.append(seconds)
        if len(pauses) == 1:
            storage.push(1)  # the next refresh sees it
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_sleep", pause)
    result = invoke("stats", "--watch", "--every", "5s", "--json", "--db", dbfile)
    assert result.exit_code == 0
    assert [json.loads(line)["pending"] for line in result.stdout.splitlines()] == [0, 1]
    assert pauses == [5, 5]


# worker ----------------------------------------------------------------------------------------------------
def test_worker_runs_a_handler_function_until_idle(invoke, dbfile, storage, modules):
    modules(
        "handlers_a",
        """
        def double(n: int) -> int:
            if n < 0:
                raise ValueError("negative")
            return n * 2
    """,
    )
    ok, bad = storage.push_bulk([21, -1])
    result = invoke("worker", "handlers_a:double", "--until-idle", "--db", dbfile)
    assert result.exit_code == 0, result.output
    assert (
        f"task {ok} done" in result.stdout
        and f"task {bad} dead: ValueError: negative" in result.stdout
    )
    assert result.stdout.splitlines()[-1] == "handled 2 tasks"
    assert storage.fetch_by_id(ok).result == 42


def test_worker_options(invoke, dbfile, storage, modules):
    modules(
        "handlers_b",
        """
        def flaky(n):
            raise ValueError("try again")
    """,
    )
    maps = SqliteStorage(storage.db, queue="maps")
    task_id = maps.push(1)
    storage.push(2)  # another queue: untouched
    result = invoke(
        "worker",
        "handlers_b:flaky",
        "--queue",
        "maps",
        "--concurrency",
        "2",
        "--retries",
        "3",
        "--grace",
        "1s",
        "--name",
        "maps-worker",
        "--until-idle",
        "--quiet",
        "--db",
        dbfile,
    )
    assert result.exit_code == 0 and result.stdout.strip() == "handled 1 task"
    info = maps.fetch_by_id(task_id)
    assert info.status is Status.FAILED and info.worker.startswith("maps-worker:")
    assert storage.stats("default")["pending"] == 1


def test_worker_runs_a_built_worker_or_monitor(invoke, dbfile, storage, modules, monkeypatch):
    monkeypatch.setenv("CLI_TEST_DB", dbfile)
    modules(
        "handlers_c",
        """
        import os
        from taskpipe import Monitor, WorkerBuilder
        from taskpipe.sqlite import SqliteStorage, connect

        storage = SqliteStorage(connect(os.environ["CLI_TEST_DB"]), queue="built")
        worker = WorkerBuilder("built").backend(storage).build(lambda x: x + 1)
        monitor = Monitor().register(WorkerBuilder("other").backend(storage).build(lambda x: x - 1))
    """,
    )
    built = SqliteStorage(storage.db, queue="built")
    first = built.push(1)
    result = invoke("worker", "handlers_c:worker", "--until-idle", "--concurrency", "3")
    assert result.exit_code == 0 and result.stdout.strip() == "handled 1 task"
    assert "--concurrency ignored" in result.stderr
    assert built.fetch_by_id(first).result == 2
    second = built.push(10)
    assert invoke("worker", "handlers_c:monitor", "--until-idle").exit_code == 0
    assert built.fetch_by_id(second).result == 9


def test_worker_import_errors(invoke, dbfile, modules):
    modules(
        "handlers_d",
        """
        value = 42

        def needs_magic(x, magic: "Unknown"):
            pass
    """,
    )
    modules(
        "handlers_e",
        """
        raise RuntimeError("cannot start")
    """,
    )
    modules(
        "handlers_f",
        """
        import does_not_exist_anywhere
    """,
    )
    bad_input(
        invoke("worker", "no_such_module_xyz:run", "--db", dbfile),
        "no_such_module_xyz",
        "no such module",
    )
    bad_input(invoke("worker", "handlers_d:nothing", "--db", dbfile), "has no attribute 'nothing'")
    bad_input(invoke("worker", "handlers_d", "--db", dbfile), "MODULE:ATTR")
    bad_input(invoke("worker", "handlers_d:value", "--db", dbfile), "int", "handler function")
    bad_input(invoke("worker", "handlers_e:x", "--db", dbfile), "RuntimeError: cannot start")
    bad_input(invoke("worker", "handlers_f:x", "--db", dbfile), "does_not_exist_anywhere")
    bad_input(
        invoke("worker", "handlers_d:needs_magic", "--until-idle", "--db", dbfile), "needs_magic"
    )


def test_worker_for_a_handler_needs_a_database(invoke, modules, tmp_path):
    modules("handlers_g", "def h(x):\n    return x\n")
    bad_input(invoke("worker", "handlers_g:h", "--until-idle"), "--db")
    bad_input(invoke("worker", "handlers_g:h", "--db", str(tmp_path / "none.db")), "does not exist")


def test_errors_from_sqlite3_itself_are_failures(invoke, dbfile, monkeypatch):
    def broken(self, queue=None):
        raise sqlite3.OperationalError("disk I/O error")  # the hot paths call sqlite3 directly

    monkeypatch.setattr(SqliteStorage, "stats", broken)
    failed(invoke("stats", "--db", dbfile), "database error: disk I/O error")
    assert len(invoke("stats", "--db", dbfile).stderr.splitlines()) == 1


def test_python_dash_m_main_is_the_cli():
    import taskpipe.__main__ as entry

    assert entry.main is cli_module.main


# A real run, in subprocesses -------------------------------------------------------------------------------
def test_push_worker_tasks_in_real_processes(tmp_path):
    (tmp_path / "jobs_handlers.py").write_text(
        "def double(args):\n    return {'doubled': args['n'] * 2}\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("TASKPIPE_DB", None)
    db = str(tmp_path / "real.db")

    def taskpipe_(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "taskpipe", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert taskpipe_("--version").stdout.strip() == f"taskpipe {taskpipe.__version__}"
    missing = taskpipe_("tasks", "--db", db)
    assert missing.returncode == 2 and "no taskpipe database at" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert taskpipe_("setup", "--db", db).returncode == 0
    for n in (1, 2, 3):
        pushed = taskpipe_("--db", db, "push", json.dumps({"n": n}))
        assert pushed.returncode == 0, pushed.stderr
    ran = taskpipe_("worker", "jobs_handlers:double", "--until-idle", "--db", f"sqlite:///{db}")
    assert ran.returncode == 0, ran.stderr
    assert "handled 3 tasks" in ran.stdout
    listed = taskpipe_("tasks", "--status", "done", "--json", "--db", db)
    assert listed.returncode == 0, listed.stderr
    done = json.loads(listed.stdout)
    assert [t["result"] for t in done] == [{"doubled": 6}, {"doubled": 4}, {"doubled": 2}]
    assert all(t["status"] == "done" and t["attempts"] == 1 for t in done)


def test_show_lists_the_recoveries(invoke, dbfile, storage):
    from freezegun import freeze_time

    from taskpipe import WorkerContext

    with freeze_time("2026-01-01 12:00:00") as frozen:
        task_id = storage.push("held")
        gone = WorkerContext("gone", capacity=1, report=print)
        elsewhere = SqliteStorage(storage.db)
        elsewhere._host_id = "another-host"  # only its silence tells that it died
        elsewhere.beat(gone)
        elsewhere.claim(gone, 1)
        frozen.tick(61)
        storage.beat(WorkerContext("rescuer", capacity=1, report=print))
    out = invoke("show", str(task_id), "--db", dbfile).stdout
    assert "recoveries (1)" in out and f"worker {gone.run_id} stopped beating" in out
    [recovery] = json.loads(invoke("show", str(task_id), "--json", "--db", dbfile).stdout)[
        "recoveries"
    ]
    assert recovery["worker"] == gone.run_id and recovery["counted"] is True
