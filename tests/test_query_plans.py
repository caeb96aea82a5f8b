"""The SQLite dialect's hot statements use the index made for them (a plan, not a
timing: a wrong index here made claims sort every due row, 5× slower)."""

from __future__ import annotations

import pytest

from taskpipe.sql.sqlite import SqliteDialect

QUERIES = SqliteDialect.queries


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("claim", "taskpipe_jobs_claim"),
        ("claim_isolated", "taskpipe_jobs_isolated"),
        ("any_isolated", "taskpipe_jobs_isolated"),
        ("next_due", "taskpipe_jobs_due"),
        ("anything_due", "taskpipe_jobs_due"),
        ("ack_done", "INTEGER PRIMARY KEY"),
        ("ack_failed", "INTEGER PRIMARY KEY"),
        ("id_for_key", "taskpipe_jobs_key"),
    ],
)
def test_each_hot_statement_uses_its_index(db, name, index):
    sql = getattr(QUERIES, name)
    plan = " / ".join(
        row[3] for row in db.execute_sql("EXPLAIN QUERY PLAN " + sql, (1,) * sql.count("?"))
    )
    assert index in plan and "TEMP B-TREE" not in plan, plan
