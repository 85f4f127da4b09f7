"""Migrate a running machine in memory, through the savevm framework only, and compare the
destination with a replay that never moved. A broken variant shows the comparison can fail."""

from __future__ import annotations

import pytest

from vmsim import (
    TRANSITIONS,
    Machine,
    MachineConfig,
    MissingSectionError,
    RunState,
    SectionFull,
    SectionPart,
    SectionStart,
    WorkloadKind,
    load_check_complete,
    load_cleanup,
    load_section_full,
    load_section_part,
    load_section_start,
    replay,
    state_cleanup,
    state_complete,
    state_iterate,
    state_pending_exact,
    state_setup,
)
from vmsim.testing import migrate_in_memory

BATCH_PAGES = 64
TICKS_BEFORE = 1500
TICKS_AFTER = 1200


def config_for(workload, vcpus=2):
    return MachineConfig(
        ram_mib=8, workload=workload, vcpus=vcpus, dirty_rate=60_000, hot_mib=1, seed=11
    )


def load(destination, record):
    if isinstance(record, SectionStart):
        load_section_start(destination.savevm, record)
    elif isinstance(record, SectionPart):
        load_section_part(destination.savevm, record)
    else:
        load_section_full(destination.savevm, record)


def precopy(source, destination, passes=2):
    """Setup, then passes of iterate (source keeps running between batches) and a sync."""
    for record in state_setup(source.savevm):
        load(destination, record)
    for _ in range(passes):
        while (part := state_iterate(source.savevm, BATCH_PAGES)) is not None:
            load_section_part(destination.savevm, part)
            source.run(5)
        state_pending_exact(source.savevm)


@pytest.mark.parametrize("workload", list(WorkloadKind))
@pytest.mark.parametrize("vcpus", [1, 3])
def test_migrated_machine_matches_the_replay(workload, vcpus):
    config = config_for(workload, vcpus)
    source = Machine.boot(config)
    source.vm_start()
    source.run(TICKS_BEFORE)
    destination = Machine.for_incoming(config)

    precopy(source, destination)
    assert source.stop_for_migration() == RunState.RUNNING
    for record in state_complete(source.savevm, BATCH_PAGES):
        load(destination, record)
    state_cleanup(source.savevm)
    load_cleanup(destination.savevm)
    source.vm_stop(RunState.POSTMIGRATE)
    migrated_at = source.ticks
    assert migrated_at > TICKS_BEFORE  # the source really ran during precopy

    assert destination.migrated_runstate() == RunState.RUNNING
    destination.vm_start()
    destination.run(TICKS_AFTER)
    destination.vm_stop()

    assert replay(config, migrated_at + TICKS_AFTER) == destination.digest()
    if workload is WorkloadKind.AB:
        assert destination.check_ab_ram() == []


def test_serial_output_continues_on_the_destination():
    config = config_for(WorkloadKind.AB)
    source = Machine.boot(config)
    source.vm_start()
    source.run(TICKS_BEFORE)
    destination = migrate_in_memory(source, ticks_per_batch=3)
    destination.vm_start()
    destination.run(TICKS_AFTER)
    reference = Machine.boot(config)
    reference.vm_start()
    reference.run(source.ticks + TICKS_AFTER)

    assert reference.take_serial_output() == (
        source.take_serial_output() + destination.take_serial_output()
    )


def test_final_ram_taken_before_the_stop_handlers_fails_the_comparison():
    config = config_for(WorkloadKind.RANDOM)
    source = Machine.boot(config)
    source.vm_start()
    source.run(TICKS_BEFORE)
    destination = Machine.for_incoming(config)
    precopy(source, destination)
    # The bug: drain RAM while still running, stop, then send only the device sections; the
    # ITS tables its stop handler wrote into guest RAM never reach the destination.
    while state_pending_exact(source.savevm):
        while (part := state_iterate(source.savevm, BATCH_PAGES)) is not None:
            load_section_part(destination.savevm, part)
    source.stop_for_migration()
    dropped_pfns = set()
    for record in state_complete(source.savevm, BATCH_PAGES):
        if isinstance(record, SectionFull):
            load_section_full(destination.savevm, record)
        else:
            dropped_pfns.update(record.batch.first_pfns.tolist())
    assert {source.layout.its_table_pfn} == dropped_pfns  # exactly what the handler dirtied
    destination.vm_start()
    destination.run(TICKS_AFTER)
    destination.vm_stop()

    assert replay(config, source.ticks + TICKS_AFTER) != destination.digest()


def test_a_paused_source_stays_paused_on_the_destination():
    config = config_for(WorkloadKind.HOTSET)
    source = Machine.boot(config)
    source.vm_start()
    source.run(TICKS_BEFORE)
    source.vm_stop(RunState.PAUSED)
    destination = migrate_in_memory(source)

    assert destination.migrated_runstate() == RunState.PAUSED
    destination.vm_stop(destination.migrated_runstate())  # INMIGRATE -> PAUSED
    destination.vm_start()
    destination.run(TICKS_AFTER)
    destination.vm_stop()
    assert replay(config, TICKS_BEFORE + TICKS_AFTER) == destination.digest()


def test_migrating_twice_matches_the_replay():
    config = config_for(WorkloadKind.RANDOM)
    first = Machine.boot(config)
    first.vm_start()
    first.run(TICKS_BEFORE)
    second = migrate_in_memory(first, ticks_per_batch=2, max_pages=100)
    second.vm_start()
    second.run(300)
    third = migrate_in_memory(second, ticks_per_batch=2, max_pages=100)
    third.vm_start()
    third.run(300)
    third.vm_stop()

    assert replay(config, third.ticks) == third.digest()


def test_a_stream_without_a_device_section_is_incomplete():
    """The destination's end-of-stream check names the device whose FULL section never came."""
    config = config_for(WorkloadKind.HOTSET)
    source = Machine.boot(config)
    source.vm_start()
    source.run(100)
    destination = Machine.for_incoming(config)
    precopy(source, destination)
    source.stop_for_migration()
    received = set()
    for record in state_complete(source.savevm, BATCH_PAGES):
        if isinstance(record, SectionFull) and record.idstr == "its":
            continue  # lost on the way
        load(destination, record)
        if isinstance(record, SectionFull):
            received.add((record.idstr, record.instance_id))

    with pytest.raises(MissingSectionError) as caught:
        load_check_complete(destination.savevm, received)
    assert "missing device state for 'its' instance 0" == str(caught.value)


# Every run state a source can be migrated from: those QEMU's table lets stop in finish-migrate,
# less the two `migrate` refuses ("Guest is waiting for an incoming migration", "Can't migrate
# the vm that was paused due to previous migration").
SOURCE_RUNSTATES = sorted(
    state
    for state in RunState
    if RunState.FINISH_MIGRATE in TRANSITIONS[state]
    and state not in {RunState.INMIGRATE, RunState.POSTMIGRATE}
)


def source_in(config, runstate):
    """A booted source brought to runstate (through RUNNING unless it is PRELAUNCH)."""
    source = Machine.boot(config)
    if runstate is RunState.PRELAUNCH:
        return source
    source.vm_start()
    source.run(300)
    if runstate is not RunState.RUNNING:
        source.vm_stop(runstate)
    return source


@pytest.mark.parametrize("runstate", SOURCE_RUNSTATES)
def test_the_destination_takes_the_run_state_the_source_had(runstate):
    """process_incoming_migration_bh: a running source's VM starts on the destination; any
    other run state arrives in globalstate and is set as is (runstate_set), from INMIGRATE.
    Where QEMU allows `cont` from that state, the VM then runs on like the replay."""
    config = MachineConfig(ram_mib=4, vcpus=1, seed=3)
    source = source_in(config, runstate)
    destination = migrate_in_memory(source)

    assert runstate == destination.migrated_runstate()
    if runstate is RunState.RUNNING:
        destination.vm_start()
    else:
        destination.vm_stop(runstate)
    assert runstate == destination.runstate.state
    if RunState.RUNNING in TRANSITIONS[runstate] or runstate is RunState.RUNNING:
        destination.vm_start()
        destination.run(200)
        destination.vm_stop()
        assert replay(config, source.ticks + 200) == destination.digest()
