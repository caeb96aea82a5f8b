"""taskpipe for Flask: a ``Router`` on the app's store, tasks run inside the app
context, and ``flask taskpipe …`` commands.

::

    from flask import Flask, current_app
    from taskpipe.contrib.flask import Taskpipe

    app = Flask(__name__)
    app.config["TASKPIPE_DB"] = "jobs.db"       # a SQLite path or a server URL
    tp = Taskpipe(app)                          # or Taskpipe(), then tp.init_app(app)

    @tp.task(retries=3)
    def send_welcome(email: str) -> str:
        return current_app.config["MAIL_SENDER"]   # tasks run inside the app context

    send_welcome.push("a@example.com")          # from a view, a script, a shell

then ``flask taskpipe setup`` once, and ``flask taskpipe worker`` (``--until-idle``,
``--concurrency``, ``--queue``…). ``flask taskpipe tasks|show|retry|kill|purge|stats|…``
are taskpipe's own commands, on the app's store.

Configuration: ``TASKPIPE_DB`` (required: what ``taskpipe.open_storage`` opens),
``TASKPIPE_QUEUE`` (the default queue, "default"), ``TASKPIPE_EAGER`` (True: each push
runs its task at once, for tests; see ``taskpipe.testing.eager``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from .. import memory
from ..connection import open_storage
from ..layers import RetryPolicy
from ..layers.chain import Handle, Layer
from ..router import PushOptions, RoutedTask, Router, _task_name
from ..store import Store
from ..task import Task, TaskId
from ..worker import Worker, WorkerBuilder

try:
    import flask
    from flask.cli import AppGroup, with_appcontext
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("taskpipe.contrib.flask needs Flask: pip install 'taskpipe[flask]'") from exc

if TYPE_CHECKING:
    import click

    from ..testing import Eager

__all__ = ["AppWorkerBuilder", "FlaskTask", "Taskpipe", "app_context"]

P = ParamSpec("P")
R = TypeVar("R")

#: The key of ``app.extensions`` holding an app's taskpipe state.
EXTENSION = "taskpipe"


def app_context(app: flask.Flask) -> Layer:
    """A layer that runs each task inside ``app.app_context()`` (``current_app``, ``g``
    and extensions bound to the app work in handlers). Add it last, so that it is the
    innermost layer: a ``timeout`` layer runs what is inside it on a thread of its own."""

    def layer(call_next: Handle) -> Handle:
        def handle(task: Task[Any], ctx: Any) -> Any:
            with app.app_context():
                return call_next(task, ctx)

        return handle

    return layer


class AppWorkerBuilder(WorkerBuilder):
    """A ``WorkerBuilder`` whose ``build`` adds ``app_context(app)`` as the innermost
    layer (what ``Taskpipe.worker_builder`` returns)."""

    def __init__(self, name: str, app: flask.Flask):
        super().__init__(name)
        self.app = app

    def build(self, handler: Callable[..., Any]) -> Worker:
        """Build the worker (see ``WorkerBuilder.build``), its handler run inside the
        app context."""
        self._layers.append(app_context(self.app))
        try:
            return super().build(handler)
        finally:
            self._layers.pop()


@dataclass
class _AppState:
    """What ``init_app`` keeps in ``app.extensions["taskpipe"]``."""

    extension: Taskpipe
    app: flask.Flask
    url: Any
    router: Router
    eager: Eager | None = None


class Taskpipe:
    """The Flask extension: ``Taskpipe(app)``, or ``Taskpipe()`` then ``init_app(app)``
    (app factories; one extension may serve several apps). ``@tp.task`` registers
    task functions on each app's ``Router``."""

    def __init__(self, app: flask.Flask | None = None):
        self.app = app
        self._tasks: dict[str, FlaskTask[Any, Any]] = {}
        self._states: list[_AppState] = []
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"Taskpipe(tasks={len(self._tasks)}, apps={len(self._states)})"

    def init_app(self, app: flask.Flask) -> None:
        """Open the store of ``app.config["TASKPIPE_DB"]`` (queue ``TASKPIPE_QUEUE``),
        register the tasks on a ``Router`` over it, add ``flask taskpipe`` to the app's
        commands, and switch eager mode on when ``TASKPIPE_EAGER`` is true."""
        url = app.config.get("TASKPIPE_DB")
        if url is None or url == "":
            raise RuntimeError(
                "set app.config['TASKPIPE_DB'] (a SQLite path or a server URL, e.g. "
                "'jobs.db' or 'postgresql://user@host/db') before Taskpipe.init_app(app)"
            )
        queue = app.config.get("TASKPIPE_QUEUE", "default")
        state = _AppState(self, app, url, Router(open_storage(url, queue)))
        for task in self._tasks.values():
            task._register(state.router)
        if app.config.get("TASKPIPE_EAGER"):
            from ..testing import Eager

            state.eager = Eager(state.router, builder=self._eager_builder(app))
            state.eager.install()
        app.extensions[EXTENSION] = state
        self._states.append(state)
        app.cli.add_command(_command_group(), "taskpipe")

    # Registering tasks ---------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> FlaskTask[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retries: int | RetryPolicy | None = None,
        priority: int = 0,
        queue: str | None = None,
    ) -> Callable[[Callable[P, R]], FlaskTask[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        retries: int | RetryPolicy | None = None,
        priority: int = 0,
        queue: str | None = None,
    ) -> Any:
        """Register a task function, as ``@tp.task`` or ``@tp.task(...)``, with the
        options of ``Router.task``; before or after ``init_app``."""
        options: dict[str, Any] = {"retries": retries, "priority": priority, "queue": queue}
        Router(memory.backend()).task(**options)  # checks them now, with Router's messages

        def register(fn: Callable[..., Any]) -> FlaskTask[Any, Any]:
            task_name = _task_name(fn) if name is None else name
            existing = self._tasks.get(task_name)
            if existing is not None:
                raise ValueError(
                    f"task name {task_name!r} is taken by {existing.fn!r}: give one of them "
                    "another name with @tp.task(name=...)"
                )
            task: FlaskTask[Any, Any] = FlaskTask(self, fn, task_name, options)
            for state in self._states:
                task._register(state.router)
            self._tasks[task_name] = task
            return task

        return register if fn is None else register(fn)

    # The current app's objects -------------------------------------------------------------
    def state(self, app: flask.Flask | None = None) -> _AppState:
        """The taskpipe state of ``app`` (default: the current app, else the app given
        to ``Taskpipe(app)``)."""
        if app is None:
            if flask.has_app_context():
                app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
            elif self.app is not None:
                app = self.app
            else:
                raise RuntimeError(
                    "no Flask app: push from inside an app context (a view, a CLI command, "
                    "`with app.app_context():`), or create the extension with Taskpipe(app)"
                )
        state = app.extensions.get(EXTENSION)
        if not isinstance(state, _AppState) or state.extension is not self:
            raise RuntimeError(f"Taskpipe.init_app() was not called for the app {app.name!r}")
        return state

    @property
    def router(self) -> Router:
        """The current app's ``Router`` (for ``WorkerBuilder.build`` and ``run_until_idle``)."""
        return self.state().router

    @property
    def storage(self) -> Store:
        """The current app's store (its default queue)."""
        return self.state().router.storage

    def setup(self) -> None:
        """Create or migrate taskpipe's tables in the current app's store (idempotent),
        as ``flask taskpipe setup`` does."""
        store: Any = self.storage
        type(store).setup(store)

    def worker_builder(self, name: str = "flask", *, queue: str | None = None) -> AppWorkerBuilder:
        """A ``WorkerBuilder`` on the current app's store (``queue``: another queue of
        it) whose tasks run inside the app context; finish it with ``.build(tp.router)``."""
        state = self.state()
        builder = AppWorkerBuilder(name, state.app)
        builder.backend(state.router.storage_for(queue))
        return builder

    def run_until_idle(self, *, queue: str | None = None) -> list[Any]:
        """Run the current app's due tasks (inside the app context) and return what ran,
        as ``taskpipe.testing.run_until_idle`` does."""
        from ..testing import run_until_idle

        router: Any = self.router
        return run_until_idle(self.worker_builder("taskpipe-testing", queue=queue).build(router))

    def _eager_builder(self, app: flask.Flask) -> Callable[[Store], WorkerBuilder]:
        def builder(store: Store) -> WorkerBuilder:
            return AppWorkerBuilder("taskpipe-eager", app).backend(store)

        return builder


class FlaskTask(Generic[P, R]):
    """A function registered with ``@tp.task``: calling it runs it here and now;
    ``push``, ``push_task``, ``task`` and ``using`` are those of the current app's
    ``RoutedTask``."""

    def __init__(self, extension: Taskpipe, fn: Callable[P, R], name: str, options: dict[str, Any]):
        self.extension = extension
        self.fn = fn
        self.name = name
        self._options = options
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"FlaskTask({self.name!r})"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now."""
        return self.fn(*args, **kwargs)

    @property
    def routed(self) -> RoutedTask[P, R]:
        """This function's ``RoutedTask`` on the current app's router."""
        return self.extension.state().router.registered[self.name]

    def push(self, *args: Any, **kwargs: Any) -> TaskId:
        """Enqueue a call in the current app's store; return its id once committed."""
        return self.routed.push(*args, **kwargs)

    def push_task(self, task: Task[dict[str, Any]]) -> TaskId:
        """Enqueue a ``Task`` made by ``task(...)`` (see ``RoutedTask.push_task``)."""
        return self.routed.push_task(task)

    def task(self, *args: Any, **kwargs: Any) -> Task[dict[str, Any]]:
        """The ``Task`` that ``push`` would write (see ``RoutedTask.task``)."""
        return self.routed.task(*args, **kwargs)

    def using(self, **options: Any) -> PushOptions:
        """Push options (``priority``, ``run_after``, ``max_attempts``, ``key``), as
        ``RoutedTask.using``."""
        return self.routed.using(**options)

    def _register(self, router: Router) -> None:
        router.task(name=self.name, **self._options)(self.fn)


# flask taskpipe … ---------------------------------------------------------------------------
def _command_group() -> click.Group:
    """``flask taskpipe``: taskpipe's commands on the app's store, and a ``worker``
    command running the app's router inside the app context."""
    import click

    from .. import cli as tp_cli

    class Group(tp_cli._Group, AppGroup):
        """taskpipe's error handling, Flask's app loading."""

    @click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--db", metavar="PATH|URL", help="Another store (default: TASKPIPE_DB).")
    @with_appcontext
    @click.pass_context
    def group(ctx: click.Context, db: str | None) -> None:
        """taskpipe's jobs of this app: its worker, and taskpipe's commands on the
        store of app.config["TASKPIPE_DB"] (--db for another)."""
        # The worker refuses a --db given on its command line: it runs the app's store
        # (TASKPIPE_DB in the environment is the app's own setting, not a refusal).
        given = ctx.get_parameter_source("db") == click.core.ParameterSource.COMMANDLINE
        ctx.meta["taskpipe.flask.db"] = db if given else None
        state = ctx.ensure_object(tp_cli._State)
        if state.url is None:
            url = db or _current_state().url
            if not isinstance(url, str):
                raise tp_cli.BadInput("TASKPIPE_DB is not a path or URL: pass --db")
            state.url = url

    for name, command in tp_cli.cli.commands.items():
        if name != "worker":
            group.add_command(command, name)
    group.add_command(_worker_command(tp_cli), "worker")
    return group


def _current_state() -> _AppState:
    state = flask.current_app.extensions.get(EXTENSION)
    if not isinstance(state, _AppState):
        raise RuntimeError("Taskpipe.init_app(app) was not called for this app")
    return state


def _worker_command(tp_cli: Any) -> click.Command:
    import click

    @click.command(short_help="Run the app's worker (its tasks run in the app context).")
    @click.option("--queue", "-q", type=tp_cli.QUEUE, help="The queue (default: TASKPIPE_QUEUE).")
    @click.option(
        "--concurrency",
        "-c",
        type=tp_cli._Int64(min=1),
        default=1,
        show_default=True,
        help="Handler threads.",
    )
    @click.option(
        "--retries",
        type=tp_cli._Int64(min=0, max=tp_cli.INT64_MAX - 1),
        default=0,
        show_default=True,
        help="Retries of a failed task (a task's own retries= wins).",
    )
    @click.option(
        "--grace",
        type=tp_cli.DURATION,
        default="30s",
        show_default=True,
        help="Shutdown grace for running tasks.",
    )
    @click.option("--until-idle", is_flag=True, help="Run what is due now, then exit.")
    @click.option("--name", type=tp_cli.WORKER_NAME, help="The worker's name (default: the queue).")
    @click.option("--quiet", is_flag=True, help="Do not print a line per finished task.")
    @tp_cli.LOG_LEVEL
    def worker(
        queue: str | None,
        concurrency: int,
        retries: int,
        grace: float,
        until_idle: bool,
        name: str | None,
        quiet: bool,
        log_level: str,
    ) -> None:
        """Run a worker over the app's tasks (those registered with @tp.task), each
        inside the app context, on TASKPIPE_QUEUE (or --queue: one worker per queue)."""
        if click.get_current_context().meta.get("taskpipe.flask.db"):
            raise tp_cli.BadInput(
                "flask taskpipe worker runs the app's tasks on its store (TASKPIPE_DB): "
                "--db is for the other commands"
            )
        state = _current_state()
        store = state.router.storage_for(queue)
        builder = (
            state.extension.worker_builder(name or store.queue, queue=queue)
            .concurrency(concurrency)
            .retry(RetryPolicy.retries(retries))
            .shutdown_grace(grace)
        )
        if not quiet:
            builder.on_event(tp_cli._print_events)
        router: Any = state.router
        try:
            built = builder.build(router)
        except tp_cli.BuildError as exc:
            raise tp_cli.BadInput(str(exc)) from exc
        with tp_cli._logging_to_stderr(log_level):
            if until_idle:
                handled = built.run_until_idle()
                click.echo(f"handled {handled} task{'s' if handled != 1 else ''}")
            else:
                built.run()

    return worker
