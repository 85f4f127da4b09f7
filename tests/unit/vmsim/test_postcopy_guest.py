"""Postcopy in memory: the destination runs its guest before all pages have arrived.

The source stops after a precopy pass, sends the device pages, names every page still to send
(the discard), then the device state; the destination starts its guest at once and requests the
pages its vCPU blocks on while the rest are pushed in the background. Whatever order pages arrive
in, the digest after N ticks equals the replay's. A variant that lets the guest write before its
pages arrive shows the check can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsim import (
    PAGE_SIZE,
    Machine,
    MachineConfig,
    NotAllowed,
    RamError,
    RunState,
    SectionPart,
    WorkloadKind,
    load_section_full,
    load_section_part,
    replay,
    state_complete_devices,
    state_complete_postcopy,
    state_iterate,
    state_setup,
)
from vmsim.testing import load_record

TICKS_BEFORE = 1500
TICKS_AFTER = 1200
SLICE_TICKS = 50


def config_for(workload: WorkloadKind, vcpus: int = 2) -> MachineConfig:
    return MachineConfig(
        ram_mib=8, workload=workload, vcpus=vcpus, dirty_rate=60_000, hot_mib=1, seed=11
    )


def ram_section(machine: Machine) -> int:
    return next(e.section_id for e in machine.savevm.entries if e.idstr == "ram")


def switch_to_postcopy(source: Machine, *, precopy_batches: int) -> Machine:
    """Setup and part of a precopy pass (the source running), then QEMU's postcopy switch."""
    destination = Machine.for_incoming(source.config)
    for record in state_setup(source.savevm):
        load_record(destination.savevm, record)
    for _ in range(precopy_batches):
        part = state_iterate(source.savevm, 64)
        if part is None:
            break
        load_section_part(destination.savevm, part)
        source.run(5)
    source.stop_for_migration()
    first, discard = source.ram_handler.postcopy_start(source.layout.device_pfns)
    if first is not None:
        load_section_part(destination.savevm, part_of(source, first))
    destination.start_postcopy(discard)
    for record in state_complete_devices(source.savevm):
        load_section_full(destination.savevm, record)
    destination.vm_start()
    return destination


def part_of(machine: Machine, batch: object) -> SectionPart:
    return SectionPart(section_id=ram_section(machine), batch=batch, end=False)  # type: ignore[arg-type]


def run_postcopy(
    source: Machine, destination: Machine, *, ticks: int, push_pages: int, request_pages: int
) -> dict[str, int]:
    """Run the destination `ticks` ticks, serving its faults and pushing the rest; finish."""
    stats = {"requests": 0, "blocked_slices": 0}
    target = destination.ticks + ticks
    while destination.ticks < target or destination.postcopy is not None:
        postcopy = destination.postcopy
        assert postcopy is not None
        if postcopy.blocked:
            stats["blocked_slices"] += 1
            need = postcopy.waiting_for()[:request_pages]
            batch = source.ram_handler.save_pages(need)
            stats["requests"] += 1
            if batch is not None:
                load_section_part(destination.savevm, part_of(source, batch))
            destination.postcopy_unblock()
        elif destination.ticks < target:
            destination.run(min(SLICE_TICKS, target - destination.ticks))
        part = state_iterate(source.savevm, push_pages)
        if part is not None:
            load_section_part(destination.savevm, part)
            destination.postcopy_unblock()
        elif postcopy.missing_count == 0 and destination.ticks >= target:
            for end in state_complete_postcopy(source.savevm, push_pages):
                load_section_part(destination.savevm, end)
            destination.finish_postcopy()
    return stats


@pytest.mark.parametrize("workload", list(WorkloadKind))
@pytest.mark.parametrize("vcpus", [1, 3])
def test_postcopy_matches_the_replay(workload: WorkloadKind, vcpus: int) -> None:
    config = config_for(workload, vcpus)
    source = Machine.boot(config)
    source.vm_start()
    source.run(TICKS_BEFORE)
    destination = switch_to_postcopy(source, precopy_batches=4)
    switched_at = destination.ticks
    assert destination.postcopy is not None
    assert destination.postcopy.missing_count > 0

    stats = run_postcopy(source, destination, ticks=TICKS_AFTER, push_pages=8, request_pages=4)

    destination.vm_stop(RunState.PAUSED)
    assert destination.ticks == switched_at + TICKS_AFTER
    assert destination.digest() == replay(config, switched_at + TICKS_AFTER)
    if workload is not WorkloadKind.IDLE:
        assert stats["blocked_slices"] > 0  # the guest really faulted on missing pages


@settings(max_examples=25, deadline=None)
@given(
    workload=st.sampled_from([WorkloadKind.RANDOM, WorkloadKind.AB, WorkloadKind.HOTSET]),
    precopy_batches=st.integers(0, 40),
    ticks=st.integers(1, 2000),
    push_pages=st.integers(1, 300),
    request_pages=st.integers(1, 64),
)
def test_any_arrival_order_gives_the_replay(
    workload: WorkloadKind, precopy_batches: int, ticks: int, push_pages: int, request_pages: int
) -> None:
    config = config_for(workload)
    source = Machine.boot(config)
    source.vm_start()
    source.run(300)
    destination = switch_to_postcopy(source, precopy_batches=precopy_batches)
    switched_at = destination.ticks
    run_postcopy(
        source, destination, ticks=ticks, push_pages=push_pages, request_pages=request_pages
    )
    destination.vm_stop(RunState.PAUSED)
    assert destination.digest() == replay(config, switched_at + ticks)


def test_writing_before_pages_arrive_breaks_the_digest() -> None:
    """The broken variant: run the guest in plain precopy mode on a half-loaded RAM."""
    config = config_for(WorkloadKind.RANDOM)
    source = Machine.boot(config)
    source.vm_start()
    source.run(TICKS_BEFORE)
    destination = switch_to_postcopy(source, precopy_batches=4)
    switched_at = destination.ticks
    assert destination.postcopy is not None
    destination.ram.journal = None  # writes now land at once, before their pages arrive
    destination.run(TICKS_AFTER)
    destination.ram_handler.loader.postcopy = None  # late pages overwrite what the guest wrote
    while (part := state_iterate(source.savevm, 256)) is not None:
        load_section_part(destination.savevm, part)
    destination.postcopy = None
    destination.vm_stop(RunState.PAUSED)
    assert destination.digest() != replay(config, switched_at + TICKS_AFTER)


def switched_random_guest() -> tuple[Machine, Machine]:
    """A random-writing source after 200 ticks, switched to postcopy before any precopy."""
    source = Machine.boot(config_for(WorkloadKind.RANDOM))
    source.vm_start()
    source.run(200)
    return source, switch_to_postcopy(source, precopy_batches=0)


def test_a_late_copy_never_overwrites_a_received_page() -> None:
    source, destination = switched_random_guest()
    postcopy = destination.postcopy
    assert postcopy is not None
    source_copy = source.ram.pages[5].copy()
    batch = source.ram_handler._batch(np.array([5], dtype=np.intp))  # a second copy
    load_section_part(destination.savevm, part_of(source, batch))
    assert bool(postcopy.received[5])
    destination.ram.pages[5, 8:16] = 0xAB  # as if the guest wrote it
    missing_before = postcopy.missing_count
    load_section_part(destination.savevm, part_of(source, batch))
    assert destination.ram.pages[5, 8] == 0xAB
    assert postcopy.missing_count == missing_before
    assert not np.array_equal(destination.ram.pages[5], source_copy)


def test_a_blocked_vcpu_does_not_run_and_a_stop_waits_for_its_pages() -> None:
    source, destination = switched_random_guest()
    postcopy = destination.postcopy
    assert postcopy is not None
    destination.run(SLICE_TICKS)
    assert postcopy.blocked
    waiting = postcopy.waiting_for()
    assert len(waiting)
    with pytest.raises(NotAllowed, match="pages not received"):
        destination.run(1)
    with pytest.raises(NotAllowed, match="in postcopy"):
        destination.digest()
    destination.vm_stop(RunState.PAUSED)  # the ITS's table write waits in the journal too
    assert postcopy.blocked
    batch = source.ram_handler.save_pages(waiting)
    load_section_part(destination.savevm, part_of(source, batch))
    assert destination.postcopy_unblock()
    assert not postcopy.blocked


def test_device_pages_must_arrive_before_the_device_state() -> None:
    config = config_for(WorkloadKind.IDLE)
    destination = Machine.for_incoming(config)
    with pytest.raises(NotAllowed, match="ITS tables"):
        destination.start_postcopy(np.array(destination.layout.device_pfns, dtype=np.intp))


def test_postcopy_refuses_what_does_not_fit() -> None:
    config = config_for(WorkloadKind.IDLE)
    destination = Machine.for_incoming(config)
    with pytest.raises(RamError, match="outside RAM"):
        destination.start_postcopy(np.array([config.n_pages], dtype=np.intp))
    with pytest.raises(RamError, match=f"3 bools for a RAM of {config.n_pages} pages"):
        destination.start_postcopy(np.ones(3, dtype=np.bool_))
    destination.start_postcopy(np.array([3], dtype=np.intp))
    with pytest.raises(NotAllowed, match="already started"):
        destination.start_postcopy(np.array([4], dtype=np.intp))
    with pytest.raises(NotAllowed, match="have not arrived"):
        destination.finish_postcopy()
    with pytest.raises(RamError, match="XBZRLE page outside RAM"):
        destination.ram_handler.loader.delta_pages(np.array([config.n_pages], dtype=np.int64))
    source = Machine.boot(config)
    source.ram_handler.save_setup()
    with pytest.raises(RamError, match="outside RAM"):
        source.ram_handler.save_pages(np.array([-1], dtype=np.intp))
    assert PAGE_SIZE == destination.ram.pages.shape[1]
