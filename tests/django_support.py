"""Django tasks for tests/test_django.py (imported once Django's settings are configured)."""

from __future__ import annotations

from taskpipe.contrib.django._compat import TaskContext, task

#: What the tasks ran, in order (the tests clear it).
ran: list[str] = []


class Boom(Exception):
    """An exception of this module, so that its class path is ``django_support.Boom``."""


@task
def add(a: int, b: int = 0) -> int:
    ran.append(f"add {a} {b}")
    return a + b


@task
def pair(name: str) -> tuple[str, int]:
    return (name, len(name))  # a tuple: stored JSON-normalised, as a list


@task
def boom(message: str) -> None:
    raise Boom(message)


@task
def bad_value() -> None:
    try:
        raise KeyError("inner")
    except KeyError as exc:
        raise ValueError("outer\nsecond line: not a class") from exc


@task(takes_context=True)
def attempt_and_id(context: TaskContext) -> list[object]:
    return [context.attempt, context.task_result.id]


@task
async def double(x: int) -> int:
    return 2 * x


@task
def record(label: str) -> str:
    ran.append(label)
    return label
