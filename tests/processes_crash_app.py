"""A target module that fails at import, as a broken deploy would: a supervised child
started on it dies at once, every time (the crash-loop test)."""

raise RuntimeError("processes_crash_app fails at import")
