"""Shared fixtures: a fresh SQLite database per test, set up, and a storage on it."""

from __future__ import annotations

import pytest

from taskpipe.sqlite import SqliteStorage, connect


@pytest.fixture
def db_path(tmp_path):
    """Path of a fresh SQLite file for this test."""
    return str(tmp_path / "jobs.db")


@pytest.fixture
def db(db_path):
    """A taskpipe-ready SQLite database in tmp_path (closed after the test)."""
    database = connect(db_path)
    SqliteStorage.setup(database)
    yield database
    if not database.is_closed():
        database.close()


@pytest.fixture
def storage(db):
    """A SqliteStorage on the default queue of ``db``."""
    return SqliteStorage(db)
