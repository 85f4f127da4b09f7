"""The oracle: the digest at a stop after N ticks is a pure function of (config, N).

Whatever the slicing of the N ticks into run() calls, and whatever stops, starts, dirty-log
syncs, device saves and in-memory migrations happen in between, the digest equals the
replay's, for every workload.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsim import Machine, MachineConfig, RunState, WorkloadKind, replay
from vmsim.testing import migrate_in_memory


def configs(workload):
    return st.builds(
        MachineConfig,
        ram_mib=st.sampled_from([4, 5]),
        workload=st.just(workload),
        dirty_rate=st.integers(0, 120_000),
        tick_hz=st.sampled_from([1000, 997, 250, 10_000]),
        working_set_mib=st.none() | st.integers(1, 3),
        hot_mib=st.integers(1, 2),
        hot_percent=st.integers(0, 100),
        seed=st.integers(0, 2**64 - 1),
        vcpus=st.integers(1, 4),
    )


steps = st.lists(
    st.one_of(
        st.tuples(st.just("run"), st.integers(0, 400)),
        st.tuples(st.just("pause"), st.sampled_from([RunState.PAUSED, RunState.DEBUG])),
        st.tuples(st.just("dirty-sync"), st.none()),
        st.tuples(st.just("save"), st.none()),
        st.tuples(st.just("migrate"), st.integers(1, 300)),
    ),
    max_size=12,
)


def perform(machine, step):
    """Apply one step; return the machine to continue with (a migration replaces it)."""
    kind, argument = step
    if kind == "run":
        machine.run(argument)
    elif kind == "pause":
        machine.vm_stop(argument)
        machine.vm_start()
    elif kind == "dirty-sync":
        machine.ram.dirty_log.start()
        machine.ram.dirty_log.sync()
    elif kind == "save":
        machine.digest()
        for entry in machine.savevm.entries:
            if entry.vmsd is not None:
                entry.vmsd.save(entry.opaque)
    else:
        machine = migrate_in_memory(machine, max_pages=argument, ticks_per_batch=1)
        machine.vm_start()
    return machine


@pytest.mark.parametrize("workload", list(WorkloadKind))
@settings(max_examples=60)
@given(data=st.data())
def test_digest_is_a_function_of_config_and_ticks(workload, data):
    config = data.draw(configs(workload))
    machine = Machine.boot(config)
    machine.vm_start()
    for step in data.draw(steps):
        machine = perform(machine, step)
    machine.vm_stop()

    assert replay(config, machine.ticks) == machine.digest()


@pytest.mark.parametrize("workload", list(WorkloadKind))
@settings(max_examples=60)
@given(data=st.data())
def test_any_slicing_of_run_gives_the_same_machine(workload, data):
    config = data.draw(configs(workload))
    slices = data.draw(st.lists(st.integers(0, 150), min_size=1, max_size=30))
    machine = Machine.boot(config)
    machine.vm_start()
    for ticks in slices:
        machine.run(ticks)
    machine.vm_stop()
    whole = Machine.boot(config)
    whole.vm_start()
    whole.run(sum(slices))
    whole.vm_stop()

    assert whole.digest() == machine.digest()
    assert whole.take_serial_output() == machine.take_serial_output()
