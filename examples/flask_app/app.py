"""A Flask app with background jobs: ``Taskpipe(app)``, a task, a view that pushes it.

Run it from this directory::

    export FLASK_TASKPIPE_DB=jobs.db       # any TASKPIPE_* setting, from the environment
    flask --app app taskpipe setup
    flask --app app run &                  # POST /greet/Ada pushes a task
    flask --app app taskpipe worker        # runs it, inside the app context
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from taskpipe.contrib.flask import Taskpipe

tp = Taskpipe()


@tp.task(name="greet", retries=3)  # a fixed name: the same whichever way the module is imported
def greet(name: str) -> str:
    """Runs in the worker, inside the app context: current_app is this app."""
    return f"{current_app.config['GREETING']}, {name}!"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app: settings from the defaults, then FLASK_* variables, then ``config``."""
    app = Flask(__name__)
    app.config.update(TASKPIPE_DB="jobs.db", GREETING="Hello")
    app.config.from_prefixed_env()  # FLASK_TASKPIPE_DB=…, FLASK_GREETING=…
    app.config.update(config or {})
    tp.init_app(app)

    @app.post("/greet/<name>")
    def push_greeting(name: str) -> dict[str, int]:
        return {"task_id": int(greet.push(name))}

    return app
