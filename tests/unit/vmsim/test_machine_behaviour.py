"""Machine: run states and handlers, the guest's visible behaviour, registers as real state."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vmsim import (
    Fill,
    InvalidTransition,
    Machine,
    MachineConfig,
    NotAllowed,
    RunState,
    WorkloadKind,
    replay,
)
from vmsim.workload import AB_SWEEPS_PER_B

SMALL = MachineConfig(ram_mib=4, vcpus=2)


def started(config=SMALL, ticks=0):
    machine = Machine.boot(config)
    machine.vm_start()
    machine.run(ticks)
    return machine


def test_boot_and_incoming_start_states():
    booted = Machine.boot(SMALL)
    incoming = Machine.for_incoming(SMALL)

    assert (
        booted.runstate.state,
        booted.ticks,
        booted.is_running,
    ) == (RunState.PRELAUNCH, 0, False)
    assert incoming.runstate.state == RunState.INMIGRATE
    assert not incoming.ram.array.any()


def test_run_needs_a_running_vm():
    machine = Machine.boot(SMALL)

    with pytest.raises(NotAllowed, match="prelaunch, not running"):
        machine.run(1)
    machine.vm_start()
    with pytest.raises(NotAllowed, match=">= 0"):
        machine.run(-1)


def test_start_and_stop_notify_handlers_and_a_second_start_or_stop_does_not():
    machine = Machine.boot(SMALL)
    calls = []
    machine.runstate.add_change_state_handler(lambda running, state: calls.append((running, state)))
    machine.vm_start()
    machine.vm_start()
    machine.vm_stop(RunState.PAUSED)
    machine.vm_stop(RunState.POSTMIGRATE)

    assert calls == [(True, RunState.RUNNING), (False, RunState.PAUSED)]
    assert machine.runstate.state == RunState.POSTMIGRATE


def test_stop_of_a_stopped_vm_still_checks_the_table():
    with pytest.raises(InvalidTransition, match="'prelaunch' -> 'paused'"):
        Machine.boot(SMALL).vm_stop(RunState.PAUSED)


def test_stop_for_migration_stores_the_old_state():
    machine = started()
    old = machine.stop_for_migration()

    assert old == RunState.RUNNING
    assert machine.runstate.state == RunState.FINISH_MIGRATE
    assert machine.globalstate.stored_runstate() == RunState.RUNNING


def test_digest_format_and_what_it_covers():
    machine = started(ticks=500)
    machine.vm_stop()
    digest = machine.digest()

    assert re.fullmatch(r"xxh3-128:[0-9a-f]{32}", digest)
    machine.take_serial_output()
    machine.ram.dirty_log.start()
    machine.globalstate.store(RunState.COLO)  # migration metadata: not in the digest
    assert digest == machine.digest()
    machine.its.cache[3] ^= np.uint64(8)  # device-internal state: in the digest
    assert digest != machine.digest()


def test_digest_sees_ram_and_ticks():
    machine = started(ticks=10)
    machine.vm_stop()
    digest = machine.digest()
    machine.ram.array[12345] ^= 1

    assert digest != machine.digest()
    assert replay(SMALL, 10) != replay(SMALL, 11)


def test_digest_depends_on_the_seed_and_the_workload():
    digests = {
        replay(MachineConfig(ram_mib=4, hot_mib=1, seed=seed, workload=workload), 200)
        for seed in (0, 1)
        for workload in WorkloadKind
    }

    assert len(digests) == 8


def test_ab_guest_prints_a_then_b_every_64_sweeps_and_keeps_its_ram_consistent():
    config = MachineConfig(
        ram_mib=4, workload=WorkloadKind.AB, dirty_rate=2_000_000, tick_hz=1000, vcpus=1
    )
    machine = started(config)
    for _ in range(10):
        machine.run(37)
        assert machine.check_ab_ram() == []
    sweeps = int(machine.vcpus[0].gprs[6])
    output = machine.take_serial_output()
    machine.run(200)

    assert output.startswith(b"A")
    assert sweeps // AB_SWEEPS_PER_B == output.count(b"B") > 0
    assert machine.check_ab_ram() == []


def test_check_ab_ram_reports_corruption_like_qemu():
    config = MachineConfig(ram_mib=4, workload=WorkloadKind.AB, dirty_rate=500_000, vcpus=2)
    machine = started(config, ticks=333)
    machine.vm_stop()
    page = machine.layout.partitions[1].first_pfn + 7
    machine.ram.array[page * 4096] = (int(machine.ram.array[page * 4096]) + 100) % 256

    problems = machine.check_ab_ram()

    assert len(problems) == 1
    assert problems[0].startswith(f"Memory content inconsistency at {page * 4096:x} first_byte = ")


def test_check_ab_ram_needs_the_ab_workload():
    with pytest.raises(NotAllowed, match="ab workload"):
        Machine.boot(SMALL).check_ab_ram()


def test_serial_output_leaves_the_machine_once():
    machine = started(ticks=2000)
    output = machine.take_serial_output()

    assert len(output) > 2000 // 64
    assert all(0x20 <= byte < 0x7F for byte in output)
    assert machine.take_serial_output() == b""


def test_timer_interrupts_are_handled():
    machine = started(ticks=3000)

    assert all(cpu.mscratch > 0 for cpu in machine.vcpus)
    assert machine.timer.irq_count == sum(cpu.mscratch for cpu in machine.vcpus)


def test_idle_writes_nothing_but_time_passes():
    config = MachineConfig(ram_mib=4, workload=WorkloadKind.IDLE, fill=Fill.PATTERN)
    machine = started(config)
    machine.ram.dirty_log.start()
    machine.run(1000)
    dirty = np.flatnonzero(machine.ram.dirty_log.sync())

    # Only the interrupt handler's writes (a few pages) and no workload traffic.
    assert 0 < len(dirty) <= machine.timer.irq_count
    assert machine.ticks == 1000


PERTURBATIONS = {
    "gpr": lambda m: m.vcpus[0].gprs.__setitem__(17, m.vcpus[0].gprs[17] ^ np.uint64(1)),
    "fpr": lambda m: m.vcpus[0].fprs.__setitem__(3, m.vcpus[0].fprs[3] ^ np.uint64(1 << 40)),
    "pc": lambda m: setattr(m.vcpus[0], "pc", m.vcpus[0].pc + 4),
    "mstatus": lambda m: setattr(m.vcpus[0], "mstatus", m.vcpus[0].mstatus ^ (1 << 13)),
    "mie": lambda m: setattr(m.vcpus[0], "mie", m.vcpus[0].mie ^ (1 << 3)),
    "mip": lambda m: setattr(m.vcpus[0], "mip", m.vcpus[0].mip | (1 << 7)),
    "instret": lambda m: setattr(m.vcpus[0], "instret", m.vcpus[0].instret + 1),
    "prng_counter": lambda m: setattr(m.vcpus[0], "prng_counter", m.vcpus[0].prng_counter + 1),
    "mscratch": lambda m: setattr(m.vcpus[0], "mscratch", m.vcpus[0].mscratch + 1),
    "timer": lambda m: setattr(m.timer, "deadline_ticks", m.timer.deadline_ticks + 1),
    "its": lambda m: setattr(m.its, "cache", np.roll(m.its.cache, 1)),
}


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_a_wrong_register_changes_what_the_guest_does_later(name):
    reference = started(MachineConfig(ram_mib=4, vcpus=1), ticks=700)
    perturbed = started(MachineConfig(ram_mib=4, vcpus=1), ticks=700)
    PERTURBATIONS[name](perturbed)
    for machine in (reference, perturbed):
        machine.take_serial_output()
        machine.run(3000)

    ram_differs = bytes(reference.ram.view) != bytes(perturbed.ram.view)
    output_differs = reference.take_serial_output() != perturbed.take_serial_output()
    assert ram_differs or output_differs


def test_a_long_replay_takes_seconds_not_minutes():
    config = MachineConfig(ram_mib=16, vcpus=2)

    assert replay(config, 100_000).startswith("xxh3-128:")
