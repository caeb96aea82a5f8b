"""The worker's thread pool: a ``ThreadPoolExecutor`` whose threads do not hold the
process open.

The stock executor joins its threads when the interpreter exits, so one hung
handler keeps a stopped worker's process alive for as long as it hangs. A worker
hands the leases of such handlers back to the store when its shutdown grace ends,
so nothing is lost by letting the process go: here the threads are daemons and are
not registered for the exit-time join.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import thread as _cf_thread

__all__ = ["DaemonThreadPool"]

# The override below mirrors CPython 3.9–3.13; elsewhere the stock behaviour is kept.
_HAS_INTERNALS = hasattr(_cf_thread, "_worker") and hasattr(ThreadPoolExecutor, "_adjust_thread_count")


class DaemonThreadPool(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` with daemon threads that the interpreter does not join."""

    def _adjust_thread_count(self) -> None:  # mirrors CPython 3.9–3.13
        if not _HAS_INTERNALS or not hasattr(self, "_idle_semaphore"):  # pragma: no cover
            return super()._adjust_thread_count()
        if self._idle_semaphore.acquire(timeout=0):
            return

        def weakref_cb(_, q=self._work_queue):
            q.put(None)

        num_threads = len(self._threads)
        if num_threads < self._max_workers:
            thread = threading.Thread(
                name=f"{self._thread_name_prefix or self}_{num_threads}",
                target=_cf_thread._worker,
                args=(weakref.ref(self, weakref_cb), self._work_queue, self._initializer, self._initargs),
                daemon=True,
            )
            thread.start()
            self._threads.add(thread)
