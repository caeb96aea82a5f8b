"""taskpipe's SQL stores (internals; the public names are in ``taskpipe.sqlite``).

What every SQL dialect shares: ``store`` (``SqlStorage``: push, claim, ack,
heartbeat, orphan recovery), ``expose`` (introspection), ``queries`` (the hot-path
statements), ``schema`` (tables and set-up), ``hooks`` (waking idle workers) and
``driver_errors``. The SQLite dialect: ``sqlite`` (``connect``, ``SqliteStorage``)
and ``shared`` (``SharedSqliteStorage``: many queues, one poller).
"""
