"""Standby RAM (`--mem-prealloc`): ready before a migration starts, or lent by a departed VM."""

from __future__ import annotations

from vmm.standby import StandbyRam
from vmsim import PAGE_SIZE, GuestRam

SIZE = 8 * PAGE_SIZE


async def test_prepared_ram_goes_to_an_incoming_vm_of_its_size_once() -> None:
    standby = StandbyRam()
    standby.prepare(SIZE)

    memory = await standby.take(SIZE, None)

    assert memory is not None
    assert memory.nbytes == SIZE
    assert await standby.take(SIZE, None) is None  # taken: the next one allocates its own


async def test_a_departed_vms_ram_comes_first_and_sizes_must_match() -> None:
    departed = GuestRam(SIZE)
    standby = StandbyRam()
    standby.prepare(2 * SIZE)

    assert await standby.take(SIZE, departed) is departed.array
    assert await standby.take(SIZE, None) is None  # the prepared one is 2 x SIZE: not used
    await standby.close()
