"""What a ``MODULE:ATTR`` string names: the ``taskpipe worker`` command's TARGET and a
``Supervisor``'s target are found here, the same way for both.

``import_target("myapp.tasks:worker")`` imports ``myapp.tasks`` (the current
directory is on the path, as for ``python -m``) and returns its ``worker``;
``runnable(obj)`` makes it something that runs: a ``Worker`` or a ``Monitor`` (a
``Router`` gets a worker on its own store).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import BuildError
from .monitor import Monitor
from .router import Router
from .worker import Worker, WorkerBuilder

__all__ = ["Runnable", "check_spec", "import_target", "runnable"]

#: What runs: one worker, or a group of them.
Runnable = Worker | Monitor


def check_spec(spec: str) -> tuple[str, str]:
    """``spec``'s module and attribute; ``BuildError`` unless it reads ``MODULE:ATTR``."""
    module_name, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise BuildError(f"expected MODULE:ATTR (e.g. myapp.tasks:send_email), got {spec!r}")
    return module_name, attr


def import_target(spec: str) -> Any:
    """The object ``spec`` (``MODULE:ATTR``, ATTR may be dotted) names; ``BuildError``
    saying what went wrong when the module cannot be imported or has no such name."""
    module_name, attr = check_spec(spec)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise BuildError(
                f"cannot import {module_name!r}: no such module (is its directory on PYTHONPATH?)"
            ) from exc
        raise BuildError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise BuildError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise BuildError(f"module {module_name!r} has no attribute {attr!r}") from None
    return target


def runnable(obj: Any, what: str) -> Runnable:
    """``obj`` if it is a ``Worker`` or a ``Monitor``; for a ``Router``, a worker (named
    after its queue, one thread) on the router's own store; else ``BuildError`` naming
    ``what`` (where it came from)."""
    if isinstance(obj, (Worker, Monitor)):
        return obj
    if isinstance(obj, Router):
        router: Any = obj  # build() takes a Router, though its annotation says a callable
        return WorkerBuilder(obj.storage.queue).backend(obj.storage).build(router)
    raise BuildError(f"{what} is a {type(obj).__name__}: expected a Worker, a Monitor or a Router")
