"""Worker threads for CPU-bound work that releases the GIL: multifd compression and decoding.

Source: the migration engine hands a list of jobs to `parallel_map` and waits for all of them
(the event loop's thread blocks meanwhile, so the guest cannot write a page being compressed).
zlib and zstd release the GIL while they work, so the jobs of one batch (one per multifd
channel) run on as many cores as the machine has. Destination: each channel's compressed frame
is decoded on a worker while the loop serves the other channels (`decoded`), as QEMU's multifd
receive threads do.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar, cast

from protocol import LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from netio import ChannelLike
    from protocol import DestConnection, MultifdPagesReceived, PagesToDecode

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")

decode_on_workers = (os.cpu_count() or 1) > 2  # noqa: PLR2004 - measured on 2 cores, below
"""Whether a destination decodes multifd frames on workers (`decoded`) or on the loop.

On these 2-core machines the workers lose: `python -m bench links`' mixed zstd migration took
3.53-3.62 s with them against 3.37-3.48 s without (three pairs, same rig), the destination
spending 0.2-0.3 CPU-s per GiB more, because the source's compression threads already keep
both cores busy and each frame's hand-off costs. With more cores each channel decodes on one.
"""

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


async def decoded(channel: ChannelLike, event: PagesToDecode) -> MultifdPagesReceived:
    """`event`'s pages decompressed on a worker thread, then placed in guest RAM by its channel.

    The channel reads no further frame meanwhile; the other channels go on (and decode on
    other workers). A frame that does not decode fails its channel with the decoder's error.

    Raises:
        RemoteProtocolError: the pages did not decode.
    """
    raw: bytes | LocalProtocolError
    try:
        raw = await asyncio.to_thread(event.job.run)
    except LocalProtocolError as exc:
        raw = exc
    return cast("DestConnection", channel.conn).pages_decoded(event, raw)
