"""The two seed workflow examples run to the end against SQLite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("order_fulfilment.py", "done, result 'emailed'"),
        ("user_etl_dag.py", "done, result 249"),
    ],
)
def test_the_workflow_examples_run(script, expected):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
