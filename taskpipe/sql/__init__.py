"""taskpipe's SQL stores (internals; the public names are in ``taskpipe.sqlite``).

What every SQL engine shares: ``store`` (``SqlStorage``: the store contract on SQL),
``expose`` (introspection), ``queries`` (the hot-path statements, built from
``Status``), ``schema`` (tables, set-up and migrations) and ``dialect`` (what an
engine spells its own way). SQLite: ``sqlite`` (``connect``, ``SqliteDialect``,
``SqliteStorage``), ``hooks`` (its cross-process change probe) and ``shared``
(``SharedSqliteStorage``: many queues claimed for in one round).
"""
