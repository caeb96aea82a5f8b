"""Integrations with web frameworks: ``taskpipe.contrib.flask`` (and Django's, beside it)."""
