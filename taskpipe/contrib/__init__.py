"""Integrations with web frameworks: ``taskpipe.contrib.django`` and ``taskpipe.contrib.flask``."""
