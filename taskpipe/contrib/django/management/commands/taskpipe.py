"""``manage.py taskpipe …``: taskpipe's command line on the store of a Django task
backend (``TASKS[alias]["OPTIONS"]["db"]``); ``worker`` without a target runs the
Django tasks (``taskpipe.contrib.django.worker:tasks``) of the backend's default
queue, or of ``--queue``."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from taskpipe.cli import cli
from taskpipe.contrib.django._compat import task_backends
from taskpipe.contrib.django.backend import DJANGO_DEFAULT_QUEUE, TaskpipeBackend
from taskpipe.contrib.django.worker import tasks

WORKER_TARGET = f"{tasks.__module__}:tasks"


class Command(BaseCommand):
    """taskpipe's CLI (``taskpipe --help``) with ``--db`` from the settings."""

    help = (
        "taskpipe's command line on a TaskpipeBackend's store: `manage.py taskpipe worker`, "
        "`setup`, `tasks`, `show ID`, `retry ID`… (`manage.py taskpipe --help`). "
        "--backend ALIAS (first) picks the TASKS entry (default: default)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="taskpipe's arguments")

    def run_from_argv(self, argv: list[str]) -> None:
        """``manage.py taskpipe …``: every argument goes to taskpipe's CLI as is."""
        self.handle(*argv[2:])

    def handle(self, *args: Any, **options: Any) -> None:
        """Run taskpipe's CLI on ``args`` with the backend's ``--db``."""
        argv = [str(a) for a in args]
        alias = "default"
        if argv[:1] == ["--backend"]:
            if len(argv) < 2:
                raise CommandError("--backend needs an alias of TASKS")
            alias, argv = argv[1], argv[2:]
        backend = _backend(alias)
        argv = ["--db", backend.url, *_with_worker_target(argv, backend)]
        try:
            cli.main(args=argv, prog_name="manage.py taskpipe", standalone_mode=True)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise


def _backend(alias: str) -> TaskpipeBackend:
    """The ``TaskpipeBackend`` of ``TASKS[alias]``; ``CommandError`` otherwise."""
    try:
        backend = task_backends[alias]
    except Exception as exc:
        raise CommandError(f"TASKS has no usable backend {alias!r}: {exc}") from exc
    if not isinstance(backend, TaskpipeBackend):
        raise CommandError(
            f"TASKS[{alias!r}] is a {type(backend).__name__}, not a "
            "taskpipe.contrib.django.TaskpipeBackend"
        )
    return backend


def _with_worker_target(argv: list[str], backend: TaskpipeBackend) -> list[str]:
    """``worker`` without MODULE:ATTR runs the Django tasks; its ``--queue`` is a
    Django queue name (default: Django's default queue), mapped to taskpipe's."""
    if argv[:1] != ["worker"] or any(a in ("-h", "--help") for a in argv):
        return argv
    rest = argv[1:]
    options = {"--queue", "-q", "--concurrency", "-c", "--retries", "--grace", "--name"}
    options |= {"--log-level", "--metrics-port", "--db"}
    queue, out, i, target = None, [], 0, None
    while i < len(rest):
        arg = rest[i]
        if arg in ("--queue", "-q") and i + 1 < len(rest):
            queue, i = rest[i + 1], i + 2
            continue
        if arg.startswith("--queue="):
            queue, i = arg.partition("=")[2], i + 1
            continue
        out.append(arg)
        if arg in options and i + 1 < len(rest):
            out.append(rest[i + 1])
            i += 2
            continue
        if not arg.startswith("-") and target is None:
            target = arg
        i += 1
    queue = backend.queue_for(DJANGO_DEFAULT_QUEUE if queue is None else queue)
    return ["worker", *([] if target is not None else [WORKER_TARGET]), *out, "--queue", queue]
