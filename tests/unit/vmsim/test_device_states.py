"""The machine's devices: their VMState contracts, compatibility and post_load checks."""

from __future__ import annotations

import numpy as np
import pytest

from vmsim import (
    PAGE_SIZE,
    FieldError,
    InvalidStateError,
    Machine,
    MachineConfig,
    RunState,
    SectionFull,
    UnknownSubsectionError,
    UnsupportedVersionError,
    VersionTooOldError,
    load_section_full,
)
from vmsim.devices import CPU_VMSD, ITS_VMSD
from vmsim.devices.serial import DRAIN_PERIOD_TICKS, FIFO_BYTES, LSR_OVERRUN, Serial
from vmsim.devices.timer import DISARMED, Timer

CONFIG = MachineConfig(ram_mib=4, vcpus=2, dirty_rate=20_000)


@pytest.fixture(scope="module")
def stopped_source():
    machine = Machine.boot(CONFIG)
    machine.vm_start()
    machine.run(2500)
    machine.stop_for_migration()
    return machine


def full_section(machine, idstr, instance_id, version=None):
    entry = machine.savevm.find(idstr, instance_id)
    version = entry.version_id if version is None else version
    return SectionFull(
        section_id=entry.section_id,
        idstr=idstr,
        instance_id=instance_id,
        version_id=version,
        state=entry.vmsd.save(entry.opaque, version),
    )


def with_state(section, state, version=None):
    return SectionFull(
        section_id=section.section_id,
        idstr=section.idstr,
        instance_id=section.instance_id,
        version_id=section.version_id if version is None else version,
        state=state,
    )


def test_cpu_v1_stream_loads_into_v2_code_and_mscratch_keeps_its_default(stopped_source):
    section = full_section(stopped_source, "cpu", 1, version=1)
    target = Machine.for_incoming(CONFIG)
    target.vcpus[1].mscratch = 0x5EED
    load_section_full(target.savevm, section)

    assert "mscratch" not in section.state["fields"]
    assert stopped_source.vcpus[1].mscratch != 0
    assert target.vcpus[1].mscratch == 0x5EED
    assert stopped_source.vcpus[1].pc == target.vcpus[1].pc
    assert stopped_source.vcpus[1].gprs.tolist() == target.vcpus[1].gprs.tolist()


def test_section_newer_than_the_entry_is_unsupported(stopped_source):
    section = full_section(stopped_source, "cpu", 0)
    newer = with_state(section, section.state, version=3)

    with pytest.raises(UnsupportedVersionError) as caught:
        load_section_full(Machine.for_incoming(CONFIG).savevm, newer)

    assert str(caught.value) == "unsupported version 3 for 'cpu' v2"


def test_too_old_carries_qemus_prefix(stopped_source):
    section = full_section(stopped_source, "cpu", 0)

    with pytest.raises(VersionTooOldError) as caught:
        load_section_full(Machine.for_incoming(CONFIG).savevm, with_state(section, {}, 0))

    assert str(caught.value) == (
        "error while loading state for instance 0x0 of device 'cpu': incoming version_id 0 is"
        " too old for local minimum version_id 1"
    )


def test_bad_field_names_instance_device_and_field(stopped_source):
    section = full_section(stopped_source, "cpu", 1)
    state = {**section.state, "fields": {**section.state["fields"], "pc": 2**64}}

    with pytest.raises(FieldError) as caught:
        load_section_full(Machine.for_incoming(CONFIG).savevm, with_state(section, state))

    assert str(caught.value) == (
        "error while loading state for instance 0x1 of device 'cpu': field 'pc': value"
        " 18446744073709551616 out of range for uint64"
    )
    assert (caught.value.device, caught.value.field) == ("cpu", "pc")


def test_unknown_subsection_through_the_framework(stopped_source):
    section = full_section(stopped_source, "cpu", 0)
    extra = {"cpu/turbo": {"version_id": 1, "fields": {}, "subsections": {}}}
    state = {**section.state, "subsections": extra}

    with pytest.raises(UnknownSubsectionError) as caught:
        load_section_full(Machine.for_incoming(CONFIG).savevm, with_state(section, state))

    assert str(caught.value).endswith(
        "device 'cpu': VM subsection 'cpu/turbo' in 'cpu' does not exist"
    )


def test_vector_subsection_is_sent_exactly_while_the_unit_is_on():
    machine = Machine.boot(MachineConfig(ram_mib=4, vcpus=1))
    machine.vm_start()
    seen = set()
    for _ in range(40):
        machine.run(500)
        cpu = machine.vcpus[0]
        state = CPU_VMSD.save(cpu)
        assert cpu.vector_on == ("cpu/vector" in state["subsections"])
        if not cpu.vector_on:
            assert not cpu.vregs.any()
        seen.add(cpu.vector_on)

    assert {True, False} == seen


def test_vector_registers_round_trip_when_on():
    machine = Machine.boot(MachineConfig(ram_mib=4, vcpus=1))
    machine.vm_start()
    while not (machine.vcpus[0].vector_on and machine.vcpus[0].vregs.any()):
        machine.run(100)
    source_cpu = machine.vcpus[0]
    target = Machine.for_incoming(machine.config).vcpus[0]
    CPU_VMSD.load(target, CPU_VMSD.save(source_cpu), 2)

    assert source_cpu.vregs.tolist() == target.vregs.tolist()
    assert (source_cpu.vl, source_cpu.vtype) == (target.vl, target.vtype)


@pytest.mark.parametrize(
    ("idstr", "field", "value", "message"),
    [
        ("cpu", "gprs", [1] + [0] * 31, "x0 must be zero"),
        ("cpu", "pc", 0x1234, "outside the code"),
        ("timer", "deadline_ticks", 1, "is not after the clock"),
        ("serial", "lsr", 0, "THR-empty bit disagrees with the FIFO"),
        ("its", "baser", 0, "!= "),
        ("globalstate", "runstate", b"flying".ljust(100, b"\0"), "not a run state"),
    ],
)
def test_post_load_rejects_inconsistent_state(stopped_source, idstr, field, value, message):
    section = full_section(stopped_source, idstr, 0)
    state = {**section.state, "fields": {**section.state["fields"], field: value}}

    with pytest.raises(InvalidStateError) as caught:
        load_section_full(Machine.for_incoming(CONFIG).savevm, with_state(section, state))

    assert message in str(caught.value)
    assert (idstr, field) == (caught.value.device, caught.value.field)


def test_its_saves_its_tables_on_stop_through_dirty_logged_ram():
    machine = Machine.boot(CONFIG)
    machine.vm_start()
    machine.run(1000)
    machine.ram.dirty_log.start()
    machine.vm_stop()
    dirty = np.flatnonzero(machine.ram.dirty_log.sync()).tolist()
    table = machine.ram.words[machine.layout.its_table_pfn * 512 :][2 : 2 + 64]

    assert [machine.layout.its_table_pfn] == dirty
    assert machine.its.cache.tolist() == table.tolist()


def test_its_tables_are_written_on_stop_only_never_on_start_or_while_running():
    """KVM saves the ITS tables from the stop handler only: a start (and running) neither
    writes the reserved page nor changes it, though the cache moves on; the next stop writes
    the new cache."""
    machine = Machine.boot(CONFIG)
    machine.vm_start()
    machine.run(1000)
    machine.vm_stop()
    table_pfn = machine.layout.its_table_pfn
    page = slice(table_pfn * PAGE_SIZE, (table_pfn + 1) * PAGE_SIZE)
    saved = bytes(machine.ram.array[page])
    cache_at_stop = machine.its.cache.tolist()
    machine.ram.dirty_log.start()

    machine.vm_start()
    dirty_at_start = np.flatnonzero(machine.ram.dirty_log.sync()).tolist()
    machine.run(1000)
    dirty_while_running = set(np.flatnonzero(machine.ram.dirty_log.sync()).tolist())

    assert [] == dirty_at_start
    assert table_pfn not in dirty_while_running
    assert saved == bytes(machine.ram.array[page])
    assert cache_at_stop != machine.its.cache.tolist()

    machine.vm_stop()
    dirty_at_stop = np.flatnonzero(machine.ram.dirty_log.sync()).tolist()
    table = machine.ram.words[table_pfn * 512 :][2 : 2 + 64]

    assert [table_pfn] == dirty_at_stop
    assert machine.its.cache.tolist() == table.tolist()


def test_its_post_load_rebuilds_the_cache_from_guest_ram(stopped_source):
    target = Machine.for_incoming(CONFIG)
    target.ram.array[:] = stopped_source.ram.array
    load_section_full(target.savevm, full_section(stopped_source, "its", 0))

    assert stopped_source.its.cache.tolist() == target.its.cache.tolist()


def test_its_post_load_refuses_ram_without_tables(stopped_source):
    with pytest.raises(InvalidStateError, match="no ITS tables"):
        load_section_full(
            Machine.for_incoming(CONFIG).savevm, full_section(stopped_source, "its", 0)
        )


def test_its_post_load_refuses_translations_outside_the_working_set(stopped_source):
    target = Machine.for_incoming(CONFIG)
    target.ram.array[:] = stopped_source.ram.array
    entry = target.layout.its_table_pfn * 512 + 2
    target.ram.words[entry] = target.layout.its_table_pfn * PAGE_SIZE + 8 | 1

    with pytest.raises(InvalidStateError, match="invalid translation for event 0"):
        load_section_full(target.savevm, full_section(stopped_source, "its", 0))


def test_its_cache_changes_while_the_guest_runs():
    machine = Machine.boot(CONFIG)
    before = machine.its.cache.copy()
    machine.vm_start()
    machine.run(1000)

    assert before.tolist() != machine.its.cache.tolist()
    assert ITS_VMSD.save(machine.its)["fields"]["cwriter"] > 0


def test_serial_fifo_drains_one_byte_per_period_and_counts_overruns():
    serial = Serial()
    for byte in b"0123456789abcdefXY":
        serial.transmit(byte)
    serial.catch_up(3 * DRAIN_PERIOD_TICKS)

    assert serial.overruns == 2
    assert serial.lsr & LSR_OVERRUN
    assert serial.take_output() == b"012"
    assert serial.take_output() == b""
    assert FIFO_BYTES - 3 == serial.tx_fifo_len == len(serial.tx_fifo)


def test_timer_interrupts_vcpus_round_robin():
    timer = Timer()
    timer.deadline_ticks = 5

    assert [timer.expire(3) for _ in range(4)] == [0, 1, 2, 0]
    assert timer.deadline_ticks == DISARMED


def test_globalstate_travels_and_tells_the_destination_the_source_state(stopped_source):
    target = Machine.for_incoming(CONFIG)

    assert target.migrated_runstate() == RunState.RUNNING  # nothing arrived yet
    load_section_full(target.savevm, full_section(stopped_source, "globalstate", 0))
    assert target.migrated_runstate() == RunState.RUNNING
    paused = Machine.boot(CONFIG)
    paused.stop_for_migration()
    load_section_full(target.savevm, full_section(paused, "globalstate", 0))
    assert target.migrated_runstate() == RunState.PRELAUNCH
