"""Run states: QEMU's transition table (plus one pair), pair by pair, and handler order."""

from __future__ import annotations

import itertools

import pytest

from vmsim import TRANSITIONS, InvalidTransition, RunState, RunStateMachine

# runstate_transitions_def of QEMU's system/runstate.c, copied pair by pair as the oracle.
QEMU_PAIRS = """
prelaunch inmigrate; prelaunch suspended; debug running; debug finish-migrate; debug prelaunch
inmigrate internal-error; inmigrate io-error; inmigrate paused; inmigrate running
inmigrate shutdown; inmigrate suspended; inmigrate watchdog; inmigrate guest-panicked
inmigrate finish-migrate; inmigrate prelaunch; inmigrate postmigrate; inmigrate colo
internal-error paused; internal-error finish-migrate; internal-error prelaunch
io-error running; io-error finish-migrate; io-error prelaunch
paused running; paused finish-migrate; paused postmigrate; paused prelaunch; paused colo
paused suspended; postmigrate running; postmigrate finish-migrate; postmigrate prelaunch
prelaunch running; prelaunch finish-migrate; prelaunch inmigrate
finish-migrate running; finish-migrate paused; finish-migrate postmigrate
finish-migrate prelaunch; finish-migrate colo; finish-migrate internal-error
finish-migrate io-error; finish-migrate shutdown; finish-migrate suspended
finish-migrate watchdog; finish-migrate guest-panicked
restore-vm running; restore-vm prelaunch; restore-vm suspended
colo running; colo prelaunch; colo shutdown
running debug; running internal-error; running io-error; running paused
running finish-migrate; running restore-vm; running save-vm; running shutdown
running watchdog; running guest-panicked; running colo
save-vm running; save-vm suspended
shutdown paused; shutdown finish-migrate; shutdown prelaunch; shutdown colo
debug suspended; running suspended; suspended running; suspended finish-migrate
suspended prelaunch; suspended colo; suspended paused; suspended save-vm
suspended restore-vm; suspended shutdown
watchdog running; watchdog finish-migrate; watchdog prelaunch; watchdog colo
guest-panicked running; guest-panicked finish-migrate; guest-panicked prelaunch
"""
QEMU_ALLOWED = {
    (RunState(a), RunState(b))
    for a, b in (
        pair.split() for line in QEMU_PAIRS.strip().splitlines() for pair in line.split(";")
    )
}
# QEMU lacks it: a destination keeps the run state of a source stopped by its gdbstub.
LIVEMIG_ADDITIONS = {(RunState.INMIGRATE, RunState.DEBUG)}
ALLOWED = QEMU_ALLOWED | LIVEMIG_ADDITIONS


def test_run_states_have_qemu_names():
    assert {
        "debug",
        "inmigrate",
        "internal-error",
        "io-error",
        "paused",
        "postmigrate",
        "prelaunch",
        "finish-migrate",
        "restore-vm",
        "running",
        "save-vm",
        "shutdown",
        "suspended",
        "watchdog",
        "guest-panicked",
        "colo",
    } == {str(state) for state in RunState}


def test_table_is_qemus_plus_the_documented_addition():
    """QEMU's runstate_transitions_def, plus inmigrate -> debug, which it does not have."""
    assert not LIVEMIG_ADDITIONS & QEMU_ALLOWED
    assert ALLOWED == {(a, b) for a, targets in TRANSITIONS.items() for b in targets}


@pytest.mark.parametrize(("source", "target"), list(itertools.product(RunState, RunState)))
def test_every_pair_is_allowed_exactly_when_the_table_says(source, target):
    machine = RunStateMachine(source)
    if source == target or (source, target) in ALLOWED:
        machine.transition(target)
        assert target == machine.state
    else:
        with pytest.raises(InvalidTransition) as caught:
            machine.transition(target)
        assert f"invalid runstate transition: '{source}' -> '{target}'" == str(caught.value)
        assert (source, target) == (caught.value.from_state, caught.value.to_state)
        assert source == machine.state


def record(log, name):
    def callback(running, state):
        log.append((name, running, str(state)))

    return callback


@pytest.fixture
def machine_and_log():
    machine = RunStateMachine(RunState.PRELAUNCH)
    log = []
    # Registration order deliberately differs from priority order.
    for name, priority in [("b0", 0), ("a5", 5), ("c0", 0), ("d-1", -1), ("e5", 5)]:
        machine.add_change_state_handler(
            record(log, name), priority=priority, prepare=record(log, "prep-" + name)
        )
    machine.add_change_state_handler(record(log, "noprep0"))
    return machine, log


def test_start_runs_prepares_forward_then_callbacks_forward(machine_and_log):
    machine, log = machine_and_log
    machine.notify(running=True, state=RunState.RUNNING)

    forward = ["d-1", "b0", "c0", "noprep0", "a5", "e5"]
    expected = [("prep-" + n, True, "running") for n in forward if n != "noprep0"]
    expected += [(n, True, "running") for n in forward]
    assert expected == log


def test_stop_runs_prepares_in_reverse_then_callbacks_in_reverse(machine_and_log):
    machine, log = machine_and_log
    machine.notify(running=False, state=RunState.PAUSED)

    backward = ["e5", "a5", "noprep0", "c0", "b0", "d-1"]
    expected = [("prep-" + n, False, "paused") for n in backward if n != "noprep0"]
    expected += [(n, False, "paused") for n in backward]
    assert expected == log


def test_removed_handlers_are_not_called(machine_and_log):
    machine, log = machine_and_log
    handle = machine.add_change_state_handler(record(log, "gone"), priority=1)
    handle.remove()
    handle.remove()  # idempotent
    machine.notify(running=True, state=RunState.RUNNING)

    assert "gone" not in {name for name, _, _ in log}


def test_is_running_only_in_running():
    assert [s for s in RunState if RunStateMachine(s).is_running] == [RunState.RUNNING]
