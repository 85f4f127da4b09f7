"""Worker threads for CPU-bound work that releases the GIL: multifd compression.

The migration engine hands a list of jobs to `parallel_map` and waits for all of them (the
event loop's thread blocks meanwhile, so the guest cannot write a page being compressed). zlib
and zstd release the GIL while they work, so the jobs of one batch (one per multifd channel)
run on as many cores as the machine has.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def parallel_map(fn: Callable[[JobT], ResultT], jobs: Sequence[JobT]) -> list[ResultT]:
    """`fn` over `jobs`, in order; on worker threads when there is more than one job."""
    if len(jobs) <= 1:
        return [fn(job) for job in jobs]
    return list(_workers().map(fn, jobs))


def _workers() -> ThreadPoolExecutor:
    global _pool  # noqa: PLW0603 - one pool for the daemon's life, made on first use
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(2, os.cpu_count() or 1), thread_name_prefix="multifd")
        return _pool
