"""RAM ready for an incoming VM before the migration starts (`--mem-prealloc`).

QEMU's destination is started with the VM's `-m` and `-mem-prealloc`: its RAM is faulted in
before anyone runs `migrate`, so no migration figure pays for it. A livemig destination learns
the RAM size from the stream; with `--mem-prealloc` it faults RAM in during setup, and it can
do better in two cases: given the size at start (`dest-daemon --ram-mib N`) it prepares that
RAM on a thread before it reports ready (`daemon_ready`; its QMP already answers meanwhile), and
a daemon whose VM migrated away (postmigrate: dead memory) lends that VM's RAM, zeroed, to the
next incoming one of the same size. Both matter on hosts that hand freed memory back: here a
first touch costs 1.6-2.4 s/GiB instead of 0.12 (docs/benchmarks.md).

A source keeps the XBZRLE cache's memory the same way: faulted in on a thread as soon as the
`xbzrle` capability is on (and again when `xbzrle-cache-size` changes), for the next migration
to take, where QEMU allocates it at setup and the first pass would pay for its first touch.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from migration.xbzrle import cache_bytes
from vmsim import GuestRam

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from migration.params import MigrationCapabilities, MigrationParameters


class StandbyRam:
    """At most one buffer of RAM, faulted in, waiting for an incoming VM of its size."""

    def __init__(self) -> None:
        self._ready: asyncio.Task[NDArray[np.uint8]] | None = None
        self._cache: asyncio.Task[NDArray[np.uint8]] | None = None
        self._cache_bytes = 0

    def follow_xbzrle(self, caps: MigrationCapabilities, params: MigrationParameters) -> None:
        """Fault the XBZRLE cache's memory in on a thread while `xbzrle` is on (else drop it)."""
        size_bytes = cache_bytes(params.xbzrle_cache_size_bytes) if caps.xbzrle else 0
        if size_bytes == self._cache_bytes:
            return
        self._cache_bytes = size_bytes
        if self._cache is not None and not self._cache.done():
            self._cache.cancel()  # the thread finishes; its memory is dropped
        self._cache = (
            asyncio.create_task(asyncio.to_thread(_faulted_in, size_bytes)) if size_bytes else None
        )

    async def xbzrle_ready(self) -> None:
        """Wait until the XBZRLE cache's memory is faulted in, if it is being faulted in.

        `migrate` waits for it: the first pass would otherwise wait for each page of it.
        """
        if self._cache is not None:
            await asyncio.gather(asyncio.shield(self._cache), return_exceptions=True)

    def xbzrle_cache(self) -> NDArray[np.uint8] | None:
        """The XBZRLE cache's memory if it is faulted in (None: not yet, or not wanted)."""
        cache = self._cache
        if cache is None or not cache.done() or cache.cancelled() or cache.exception():
            return None
        return cache.result()

    def prepare(self, size_bytes: int) -> None:
        """Fault `size_bytes` of RAM in on a thread, for the next incoming VM of that size."""
        self._ready = asyncio.create_task(asyncio.to_thread(_faulted_in, size_bytes))

    async def ready(self) -> None:
        """Wait until the prepared buffer is faulted in (QEMU's -mem-prealloc, before `ready`)."""
        if self._ready is not None:
            await asyncio.shield(self._ready)

    async def take(self, size_bytes: int, departed: GuestRam | None) -> NDArray[np.uint8] | None:
        """Zero-filled memory for an incoming VM of `size_bytes`, or None when nothing fits.

        The departed VM's RAM (zeroed on a thread), else the prepared buffer (zero since the
        kernel handed it over; waited for if still faulting in).
        """
        if departed is not None and departed.size_bytes == size_bytes:
            await asyncio.to_thread(departed.array.fill, 0)
            return departed.array
        ready, self._ready = self._ready, None
        if ready is None:
            return None
        memory = await ready
        return memory if memory.nbytes == size_bytes else None

    async def close(self) -> None:
        """Wait for buffers still faulting in (their threads cannot be interrupted)."""
        tasks = [task for task in (self._ready, self._cache) if task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


def _faulted_in(size_bytes: int) -> NDArray[np.uint8]:
    return GuestRam(size_bytes, prefault=True).array
