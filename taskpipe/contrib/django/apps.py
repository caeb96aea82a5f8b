"""The Django app ``taskpipe.contrib.django``: it brings ``manage.py taskpipe``."""

from django.apps import AppConfig


class TaskpipeConfig(AppConfig):
    """taskpipe's Django app (its management command ``taskpipe``)."""

    name = "taskpipe.contrib.django"
    label = "taskpipe"
    verbose_name = "taskpipe"
