"""Every Python example in README.rst and the docs runs, so the docs cannot drift.

The examples of one section (a ``----`` heading) run in order, in one namespace, in a
fresh directory, with what an invisible comment before a block sets up::

    .. example setup
       def send(message: dict) -> str: ...

    .. code-block:: python

       worker = WorkerBuilder("w").backend(storage).build(send)

Two things differ from a reader's run, both here and nowhere else: ``Worker.run()``
returns once the worker is idle (an example's ``run()`` would block forever), and the
server URLs written in the examples are replaced with the test servers'
(``TASKPIPE_TEST_POSTGRES_URL`` …); a section that needs a server whose URL is not
set is skipped, saying so (CI sets them all), as is a section that imports an optional
module that is missing (Flask).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskpipe import Worker

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]

#: URLs written in the examples, and the variable holding the test server's.
SERVER_URLS = {
    "postgresql://app@db.internal/jobs": "TASKPIPE_TEST_POSTGRES_URL",
    "mysql://app@db.internal/jobs": "TASKPIPE_TEST_MYSQL_URL",
    "redis://127.0.0.1:6379/0?prefix=myapp": "TASKPIPE_TEST_REDIS_URL",
}

#: Optional modules: a section whose examples import one that is missing is skipped.
OPTIONAL_MODULES = {
    "flask": "Flask is not installed (pip install 'taskpipe[flask]')",
    "werkzeug": "Flask is not installed (pip install 'taskpipe[flask]')",
}

_HEADING = re.compile(r"^(-{3,}|={3,})$")


@dataclass
class Block:
    """One Python example (or its invisible set-up) and where it is."""

    line: int
    code: str
    setup: bool


@dataclass
class Section:
    """The examples under one heading of one document."""

    document: str
    title: str
    blocks: list[Block]

    @property
    def id(self) -> str:
        return f"{self.document}:{self.title}"


def _indented_body(lines: list[str], start: int) -> tuple[str, int]:
    """The indented lines from ``start`` on (blank lines inside kept), dedented."""
    end = start
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    return textwrap.dedent("\n".join(lines[start:end])).strip("\n") + "\n", end


def sections_of(path: Path) -> list[Section]:
    """The sections of ``path`` that hold Python examples."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Section] = []
    current = Section(path.name, "(top)", [])
    index = 0
    while index < len(lines):
        line = lines[index]
        if index + 1 < len(lines) and _HEADING.match(lines[index + 1]) and line.strip():
            if current.blocks:
                found.append(current)
            current = Section(path.name, line.strip(), [])
            index += 2
            continue
        stripped = line.strip()
        if stripped == ".. code-block:: python" or stripped == ".. example setup":
            body_start = index + 1
            while body_start < len(lines) and lines[body_start].strip().startswith(":"):
                body_start += 1  # directive options
            code, index = _indented_body(lines, body_start)
            current.blocks.append(Block(body_start + 1, code, stripped == ".. example setup"))
            continue
        index += 1
    if current.blocks:
        found.append(current)
    return found


SECTIONS = [section for document in DOCUMENTS for section in sections_of(document)]


def test_the_documents_hold_examples() -> None:
    """The collector finds the examples (a broken parser would make every test vanish)."""
    readme = [s for s in SECTIONS if s.document == "README.rst"]
    assert len(readme) >= 8
    assert all(any(not b.setup for b in s.blocks) for s in SECTIONS)


@pytest.mark.parametrize("section", SECTIONS, ids=[s.id for s in SECTIONS])
def test_example_runs(section: Section, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Worker, "run", lambda self: self.run_until_idle())
    # A module of its own, importable while it runs: dataclasses and annotations of
    # the examples' functions resolve through sys.modules, as in a user's module.
    module = types.ModuleType("docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for block in section.blocks:
        code = block.code
        for url, variable in SERVER_URLS.items():
            if url in code:
                server = os.environ.get(variable)
                if not server:
                    pytest.skip(f"set {variable} to run this example against a real server")
                code = code.replace(url, server)
        compiled = compile(code, f"{section.document}:{block.line}", "exec")
        try:
            exec(compiled, namespace)  # noqa: S102 - the documentation's own examples
        except ModuleNotFoundError as exc:
            if exc.name not in OPTIONAL_MODULES:
                raise
            pytest.skip(OPTIONAL_MODULES[exc.name])
