"""The PostgreSQL benchmarks' worker processes (``postgres.py`` starts them).

python pg_child.py drain CONTENDER URL    # prints "ready", waits for "go" on stdin,
                                          # drains the queue, prints how many it handled
python pg_child.py listen CONTENDER URL OUT   # an idle worker; its handler appends
                                              # time.time() - pushed_at to OUT
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pg_contenders import CONTENDERS  # noqa: E402


def drain(contender: str, url: str) -> None:
    def go() -> None:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            os._exit(1)

    handled = CONTENDERS[contender].drain(url, go)
    print(handled, flush=True)


def listen(contender: str, url: str, out_path: str) -> None:
    out = open(out_path, "a", buffering=1)

    def record(pushed_at: float) -> None:
        now = time.time()
        if pushed_at > 0:  # warm-up pushes carry -1
            out.write(f"{now - pushed_at}\n")

    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    CONTENDERS[contender].listen(url, record, lambda: print("ready", flush=True))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    command, *args = sys.argv[1:]
    {"drain": drain, "listen": listen}[command](*args)
