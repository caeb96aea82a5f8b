"""Driver errors as peewee wraps them, or raw: the SQLite hot path calls sqlite3
directly (skipping peewee's per-call bookkeeping), so both kinds can surface."""

import sqlite3

import peewee as pw

OPERATIONAL_ERRORS = (pw.OperationalError, sqlite3.OperationalError)
INTEGRITY_ERRORS = (pw.IntegrityError, sqlite3.IntegrityError)
DATABASE_ERRORS = (pw.DatabaseError, sqlite3.DatabaseError)
