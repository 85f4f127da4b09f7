"""Standby RAM (`--mem-prealloc`): ready before a migration starts, or lent by a departed VM."""

from __future__ import annotations

from migration.params import MigrationCapabilities, MigrationParameters
from vmm.standby import StandbyRam
from vmsim import PAGE_SIZE, GuestRam

SIZE = 8 * PAGE_SIZE


async def test_prepared_ram_goes_to_an_incoming_vm_of_its_size_once() -> None:
    standby = StandbyRam()
    standby.prepare(SIZE)

    memory = await standby.take(SIZE, None)

    assert memory is not None
    assert memory.nbytes == SIZE
    assert not memory.any()
    assert await standby.take(SIZE, None) is None  # taken: the next one allocates its own


async def test_a_departed_vms_ram_comes_first_and_sizes_must_match() -> None:
    departed = GuestRam(SIZE)
    departed.pages[5, 100] = 7  # the departed guest's data must not leak into the next one
    standby = StandbyRam()
    standby.prepare(2 * SIZE)

    assert await standby.take(SIZE, departed) is departed.array
    assert not departed.array.any()
    assert await standby.take(SIZE, None) is None  # the prepared one is 2 x SIZE: not used
    await standby.close()


async def test_ready_waits_for_the_prepared_ram_and_leaves_it_to_take() -> None:
    standby = StandbyRam()
    await standby.ready()  # nothing prepared: nothing to wait for
    standby.prepare(SIZE)

    await standby.ready()

    memory = await standby.take(SIZE, None)
    assert memory is not None
    assert memory.nbytes == SIZE


async def test_the_xbzrle_cache_is_faulted_in_while_the_capability_is_on() -> None:
    standby = StandbyRam()
    plain, cache_of = MigrationCapabilities(), MigrationParameters().updated
    standby.follow_xbzrle(plain, cache_of({"xbzrle-cache-size": SIZE}))
    assert standby.xbzrle_cache() is None  # not asked for

    caps = MigrationCapabilities(xbzrle=True)
    standby.follow_xbzrle(caps, cache_of({"xbzrle-cache-size": SIZE + 100}))  # whole pages
    await standby.close()  # waits for the thread
    memory = standby.xbzrle_cache()
    assert memory is not None
    assert SIZE == memory.nbytes
    standby.follow_xbzrle(caps, cache_of({"xbzrle-cache-size": SIZE + 200}))
    assert memory is standby.xbzrle_cache()  # the same size: kept, for the next migration too

    standby.follow_xbzrle(caps, cache_of({"xbzrle-cache-size": 2 * SIZE}))
    assert standby.xbzrle_cache() is None  # the new size is on its way
    standby.follow_xbzrle(plain, cache_of({"xbzrle-cache-size": 2 * SIZE}))
    await standby.close()
    assert standby.xbzrle_cache() is None  # dropped with the capability
