"""Settings of the example project: Django's tasks go to a taskpipe SQLite file
(``TASKPIPE_DB``, default ``jobs.db`` beside manage.py)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-secret"
DEBUG = True
USE_TZ = True
INSTALLED_APPS = ["taskpipe.contrib.django", "shop"]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "django.sqlite3"}
}
TASKS = {
    "default": {
        "BACKEND": "taskpipe.contrib.django.TaskpipeBackend",
        "QUEUES": ["default", "emails"],
        "ENQUEUE_ON_COMMIT": True,  # inside transaction.atomic(): pushed when it commits
        "OPTIONS": {"db": os.environ.get("TASKPIPE_DB", str(BASE_DIR / "jobs.db"))},
    }
}
