"""README's "Testing" section: its recipes are there, and each one is run.

``tests/test_docs_examples.py`` runs every block of the section in order; this test
makes sure the recipes cannot silently stop running: each ``def test_…`` the reader
sees is called by an invisible block after it, and the four freezegun recipes of the
design (a delayed push, retries with backoff, a missed cron tick, a workflow's
delay) and eager mode are each one of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_docs_examples import sections_of

README = Path(__file__).resolve().parent.parent / "README.rst"


def readme_testing_section():
    [section] = [s for s in sections_of(README) if s.title == "Testing"]
    return section


def defined_tests(code: str) -> list[str]:
    return [
        node.name
        for node in ast.parse(code).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]


def called_names(code: str) -> set[str]:
    return {
        node.func.id
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


def test_each_recipe_shown_is_called_by_the_block_after_it():
    blocks = readme_testing_section().blocks
    shown = [
        (i, name) for i, b in enumerate(blocks) if not b.setup for name in defined_tests(b.code)
    ]
    assert len(shown) == 5
    for index, name in shown:
        after = blocks[index + 1]
        assert after.setup and name in called_names(after.code), name


def test_the_recipes_cover_delays_retries_cron_catch_up_workflows_and_eager_mode():
    code = {
        name: block.code
        for block in readme_testing_section().blocks
        for name in defined_tests(block.code)
    }
    needles = {
        "run_after=": "test_a_reminder_waits_for_its_time",
        ".backoff(": "test_a_flaky_fetch_is_retried_after_its_backoff",
        'missed="latest"': "test_a_restart_catches_up_the_missed_tick",
        ".delay_for(": "test_the_follow_up_mail_goes_a_day_after_the_welcome",
        "with eager(": "test_signup_sends_the_welcome_mail",
    }
    for needle, name in needles.items():
        assert needle in code[name], (needle, name)
    assert all("freeze_time" in code[n] for n in list(needles.values())[:4])
