"""Odd invocations of every ``taskpipe`` command, run through CliRunner.

Whatever the input, the command exits 0, 1 or 2; when it fails it says why in one line
on stderr ("Error: …"), never with a Python traceback. Exceptions are not caught by the
runner, so one escaping the command fails the test with its own traceback.
"""

from __future__ import annotations

import os
import sqlite3
import textwrap

import pytest
from click.testing import CliRunner

from taskpipe.cli import cli
from taskpipe.sqlite import SqliteStorage, connect

HANDLERS = "odd_inputs_handlers"
HANDLER = f"{HANDLERS}:handler"
X = object()  # where the odd value goes

ODD = {
    "empty": "",
    "blank": " ",
    "newline": "a\nb",
    "huge-int": "9" * 5000,  # over Python's 4,300-digit int parsing limit
    "int-over-64-bits": "9" * 30,
    "negative": "-1",
    "float": "1.5",
    "nan": "NaN",
    "inf": "inf",
    "-inf": "-inf",
    "non-utf8": os.fsdecode(b"caf\xe9"),  # how Python hands over a latin-1 argv: a lone surrogate
    "lone-surrogate": "\ud800",
    "10k-chars": "x" * 10_000,
    "bad-duration": "10x",
    "negative-duration": "-5s",
    "unknown-status": "finished",
    "emoji": "\N{COLLISION SYMBOL}",
}

COMMANDS = [
    # X alone is the command's name; options go to the database named below unless the
    # command is given a --db of its own.
    [X],
    ["push", X],
    ["push", "1", "--queue", X],
    ["push", "1", "--priority", X],
    ["push", "1", "--run-after", X],
    ["push", "1", "--max-attempts", X],
    ["push", "--file", X],
    ["tasks", "--status", X],
    ["tasks", "--queue", X],
    ["tasks", "--limit", X],
    ["tasks", "--offset", X],
    ["show", X],
    ["retry", X],
    ["retry", "--dead", "--queue", X],
    ["kill", X],
    ["purge", X, "--older-than", "1d"],
    ["purge", "done", "--older-than", X],
    ["purge", "done", "--older-than", "1d", "--queue", X],
    ["stats", "--queue", X],
    ["stats", "--every", X],
    ["worker", X],
    ["worker", HANDLER, "--queue", X, "--until-idle"],
    ["worker", HANDLER, "--concurrency", X, "--until-idle"],
    ["worker", HANDLER, "--retries", X, "--until-idle"],
    ["worker", HANDLER, "--grace", X, "--until-idle"],
    ["worker", HANDLER, "--name", X, "--until-idle"],
    ["worker", HANDLER, "--log-level", X, "--until-idle"],
    ["setup", "--db", X],
    ["push", "1", "--db", X],
    ["tasks", "--db", X],
    ["workers", "--db", X],
    ["queues", "--db", X],
    ["--db", X, "stats"],
]


# Odd JSON, odd files and odd databases (the files are made in the fixture below).
SPECIAL = {
    "push deep JSON": ["push", "[" * 100_000 + "]" * 100_000],
    "push JSON deeper than the limit": ["push", "[" * 900 + "]" * 900],
    "push NaN in an object": ["push", '{"a": NaN}'],
    "push 1e400": ["push", "[1e400]"],
    "push escaped lone surrogate": ["push", '"\\ud800"'],
    "push non-UTF-8 JSON": ["push", os.fsdecode(b'"caf\xe9"')],
    "push --file directory": ["push", "--file", "."],
    "push --file non-UTF-8": ["push", "--file", "latin1.jsonl"],
    "push --file huge int": ["push", "--file", "huge-int.jsonl"],
    "push --file deep": ["push", "--file", "deep.jsonl"],
    "push --file NaN": ["push", "--file", "nan.jsonl"],
    "push --file through a file": ["push", "--file", "notes.txt/x"],
    "push --file NUL": ["push", "--file", "a\x00b"],
    "push --file - non-UTF-8": ["push", "--file", "-"],  # stdin: see STDIN
    "--db directory": ["tasks", "--db", "."],
    "--db text file": ["tasks", "--db", "notes.txt"],
    "setup --db text file": ["setup", "--db", "notes.txt"],
    "--db empty file": ["tasks", "--db", "empty.db"],
    "--db another application's database": ["tasks", "--db", "app.db"],
    "setup --db another application's database": ["setup", "--db", "app.db"],
    "--db through a file": ["tasks", "--db", "notes.txt/jobs.db"],
    "setup --db in a missing directory": ["setup", "--db", "no/such/dir.db"],
    "--db unknown user": ["tasks", "--db", "~no_such_user_taskpipe/jobs.db"],
    "--db NUL": ["tasks", "--db", "a\x00b.db"],
    "--db postgres, closed port": ["tasks", "--db", "postgresql://127.0.0.1:1/jobs"],
    "--db redis, bad port": ["tasks", "--db", "redis://127.0.0.1:x/0"],
    "--db unknown scheme": ["tasks", "--db", "ftp://h/jobs"],
    "--db URL with options": ["tasks", "--db", "sqlite:///jobs.db?mode=ro"],
    "--db a device": ["tasks", "--db", os.devnull],
    "setup --db a device": ["setup", "--db", os.devnull],
    "--db a pipe": ["tasks", "--db", "db.fifo"],
}
STDIN = {"push --file - non-UTF-8": b'1\n"caf\xe9"\n'}


def _cases():
    for template in COMMANDS:
        for label, value in ODD.items():
            args = [value if part is X else part for part in template]
            name = " ".join("X" if part is X else part for part in template)
            yield pytest.param(args, None, id=f"{name} [{label}]")
    for label, args in SPECIAL.items():
        yield pytest.param(args, STDIN.get(label), id=label)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A directory with a set-up database holding a pending, a done and a dead task,
    and an importable handler module."""
    root = tmp_path_factory.mktemp("odd")
    (root / f"{HANDLERS}.py").write_text(
        textwrap.dedent("""
        def handler(args):
            return args
    """)
    )
    (root / "latin1.jsonl").write_bytes(b'"caf\xe9"\n')
    (root / "huge-int.jsonl").write_bytes(b"1" * 5000 + b"\n")
    (root / "deep.jsonl").write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    (root / "nan.jsonl").write_bytes(b"NaN\n")
    (root / "notes.txt").write_text("not a database\n")
    (root / "empty.db").touch()
    os.mkfifo(root / "db.fifo")
    with sqlite3.connect(root / "app.db") as app:
        app.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    app.close()
    db = connect(str(root / "jobs.db"))
    SqliteStorage.setup(db)
    storage = SqliteStorage(db)
    storage.push(1)
    storage.kill(storage.push(2))
    db.close()
    return root


@pytest.fixture
def run(place, monkeypatch):
    """Run ``taskpipe ARGS…`` in ``place`` (where setup may create odd file names)."""
    monkeypatch.delenv("TASKPIPE_DB", raising=False)
    monkeypatch.chdir(place)
    monkeypatch.syspath_prepend(str(place))
    runner = CliRunner()

    def invoke(args, stdin=None):
        if "--db" not in args:
            args = [*args, "--db", str(place / "jobs.db")]
        return runner.invoke(cli, args, input=stdin, catch_exceptions=False)

    return invoke


@pytest.mark.parametrize("args, stdin", list(_cases()))
def test_odd_input_gets_one_line_and_an_exit_status(run, args, stdin):
    result = run(args, stdin)
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code:
        assert "Traceback" not in result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: "), result.stderr
