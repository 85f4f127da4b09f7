"""RAM ready for an incoming VM before the migration starts (`--mem-prealloc`).

QEMU's destination is started with the VM's `-m` and `-mem-prealloc`: its RAM is faulted in
before anyone runs `migrate`, so no migration figure pays for it. A livemig destination learns
the RAM size from the stream; with `--mem-prealloc` it faults RAM in during setup, and it can
do better in two cases: given the size at start (`dest-daemon --ram-mib N`) it prepares that
RAM on a thread before it reports ready (`daemon_ready`; its QMP already answers meanwhile), and
a daemon whose VM migrated away (postmigrate: dead memory) lends that VM's RAM, zeroed, to the
next incoming one of the same size. Both matter on hosts that hand freed memory back: here a
first touch costs 1.6-2.4 s/GiB instead of 0.12 (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from vmsim import GuestRam

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


class StandbyRam:
    """At most one buffer of RAM, faulted in, waiting for an incoming VM of its size."""

    def __init__(self) -> None:
        self._ready: asyncio.Task[NDArray[np.uint8]] | None = None

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
        """Wait for a buffer still faulting in (its thread cannot be interrupted)."""
        if self._ready is not None:
            await asyncio.gather(self._ready, return_exceptions=True)


def _faulted_in(size_bytes: int) -> NDArray[np.uint8]:
    return GuestRam(size_bytes, prefault=True).array
