"""``python -m taskpipe …``: the same as the ``taskpipe`` command."""

from .cli import main

if __name__ == "__main__":
    main()
