"""Django's tasks framework on taskpipe (Django >= 6.0's ``django.tasks``, or the
``django-tasks`` backport).

In settings::

    INSTALLED_APPS += ["taskpipe.contrib.django"]     # manage.py taskpipe …
    TASKS = {"default": {"BACKEND": "taskpipe.contrib.django.TaskpipeBackend",
                         "OPTIONS": {"db": "sqlite:///jobs.db"}}}

then ``@task`` functions ``.enqueue()`` into the store, ``manage.py taskpipe setup``
creates its tables, and ``manage.py taskpipe worker`` runs them.
"""

from .backend import TaskpipeBackend

__all__ = ["TaskpipeBackend"]
