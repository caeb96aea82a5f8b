"""Integrations with web frameworks: ``taskpipe.contrib.django``."""
