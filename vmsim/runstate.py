"""Run states, QEMU's transition table, and change-state handlers.

The table is `runstate_transitions_def` of QEMU's system/runstate.c, written out as data, plus
one pair QEMU lacks (inmigrate -> debug, see `_ADDITIONS_DEF`): a change not listed raises
`InvalidTransition`. Change-state handlers follow
`qemu_add_vm_change_state_handler_prio_full` and `vm_state_notify`: the list is kept in
ascending priority (registration order within a priority); a start walks it forward and a stop
walks it backward, and in both directions every prepare callback runs before any main callback.

A handler fails by raising `HookError`. Every handler still runs (QEMU: "we should execute all
registered callbacks even if one of them returns failure, otherwise, some cleanup work of the
device will be skipped"), and `notify` returns the failures for its caller to act on, as QEMU's
vm_state_notify returns the OR of the handlers' results: a stop fails with them, a start
ignores them. Any other exception is a bug and propagates at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Final, TypeAlias

from vmsim.errors import HookError, InvalidTransition

__all__ = [
    "TRANSITIONS",
    "ChangeStateCallback",
    "ChangeStateFailure",
    "ChangeStateHandle",
    "RunState",
    "RunStateMachine",
]


class RunState(StrEnum):
    """QEMU's run states (qapi/run-state.json), by their QAPI names."""

    DEBUG = "debug"
    INMIGRATE = "inmigrate"
    INTERNAL_ERROR = "internal-error"
    IO_ERROR = "io-error"
    PAUSED = "paused"
    POSTMIGRATE = "postmigrate"
    PRELAUNCH = "prelaunch"
    FINISH_MIGRATE = "finish-migrate"
    RESTORE_VM = "restore-vm"
    RUNNING = "running"
    SAVE_VM = "save-vm"
    SHUTDOWN = "shutdown"
    SUSPENDED = "suspended"
    WATCHDOG = "watchdog"
    GUEST_PANICKED = "guest-panicked"
    COLO = "colo"


# runstate_transitions_def of QEMU's system/runstate.c, grouped by source state.
_TRANSITIONS_DEF: Final[Mapping[str, str]] = {
    "prelaunch": "inmigrate suspended running finish-migrate",
    "debug": "running finish-migrate prelaunch suspended",
    "inmigrate": (
        "internal-error io-error paused running shutdown suspended watchdog guest-panicked"
        " finish-migrate prelaunch postmigrate colo"
    ),
    "internal-error": "paused finish-migrate prelaunch",
    "io-error": "running finish-migrate prelaunch",
    "paused": "running finish-migrate postmigrate prelaunch colo suspended",
    "postmigrate": "running finish-migrate prelaunch",
    "finish-migrate": (
        "running paused postmigrate prelaunch colo internal-error io-error shutdown suspended"
        " watchdog guest-panicked"
    ),
    "restore-vm": "running prelaunch suspended",
    "colo": "running prelaunch shutdown",
    "running": (
        "debug internal-error io-error paused finish-migrate restore-vm save-vm shutdown"
        " watchdog guest-panicked colo suspended"
    ),
    "save-vm": "running suspended",
    "shutdown": "paused finish-migrate prelaunch colo",
    "suspended": ("running finish-migrate prelaunch colo paused save-vm restore-vm shutdown"),
    "watchdog": "running finish-migrate prelaunch colo",
    "guest-panicked": "running finish-migrate prelaunch",
}

# Pairs QEMU's table lacks. A destination takes the run state the source had when it was not
# running (process_incoming_migration_bh: runstate_set(global_state_get_runstate())), and a
# source can be migrated from every state that may go to finish-migrate, debug included (a
# guest stopped by the gdbstub). QEMU's table has no inmigrate -> debug, so its runstate_set
# would abort() the destination; livemig keeps the state, as every other one is kept.
_ADDITIONS_DEF: Final[Mapping[str, str]] = {"inmigrate": "debug"}

TRANSITIONS: Final[Mapping[RunState, frozenset[RunState]]] = {
    RunState(source): frozenset(
        RunState(target) for target in f"{targets} {_ADDITIONS_DEF.get(source, '')}".split()
    )
    for source, targets in _TRANSITIONS_DEF.items()
}
"""For each run state, the states it may change to: QEMU's runstate_transitions_def, plus
inmigrate -> debug so that a destination can keep a source's debug state."""

ChangeStateCallback: TypeAlias = Callable[[bool, RunState], None]
"""A change-state callback: (running, new state) -> None; raises HookError to fail."""

ChangeStateFailure: TypeAlias = tuple[str, HookError]
"""A failed change-state callback: (the handler's name, the HookError it raised)."""


class ChangeStateHandle:
    """A registered change-state handler; `remove()` unregisters it."""

    __slots__ = ("_machine", "callback", "name", "prepare", "priority")

    def __init__(
        self,
        machine: RunStateMachine,
        callback: ChangeStateCallback,
        prepare: ChangeStateCallback | None,
        priority: int,
        name: str,
    ) -> None:
        self._machine = machine
        self.callback = callback
        self.prepare = prepare
        self.priority = priority
        self.name = name

    def remove(self) -> None:
        """Unregister the handler (qemu_del_vm_change_state_handler); idempotent."""
        self._machine._remove_handler(self)  # noqa: SLF001 - the handle belongs to its machine


class RunStateMachine:
    """The current run state, checked against QEMU's table, and the change-state handlers."""

    __slots__ = ("_handlers", "_state")

    def __init__(self, initial: RunState = RunState.PRELAUNCH) -> None:
        self._state = initial
        self._handlers: list[ChangeStateHandle] = []

    @property
    def state(self) -> RunState:
        """The current run state."""
        return self._state

    @property
    def is_running(self) -> bool:
        """True in RUNNING (QEMU's runstate_is_running)."""
        return self._state is RunState.RUNNING

    def transition(self, to: RunState) -> None:
        """Change the run state (QEMU's runstate_set); a change to the same state is a no-op.

        Raises:
            InvalidTransition: the table does not allow the change.
        """
        if to is self._state:
            return
        if to not in TRANSITIONS.get(self._state, frozenset()):
            raise InvalidTransition(self._state, to)
        self._state = to

    def add_change_state_handler(
        self,
        callback: ChangeStateCallback,
        *,
        priority: int = 0,
        prepare: ChangeStateCallback | None = None,
        name: str | None = None,
    ) -> ChangeStateHandle:
        """Register a change-state handler (qemu_add_vm_change_state_handler_prio_full).

        Args:
            callback: called with (running, state) on every start and stop; raises HookError
                to report a failure.
            priority: low priorities run first when the VM starts and last when it stops.
            prepare: an optional callback run in a first phase, before any main callback.
            name: names the handler in errors; default: the callback's qualified name.

        Returns:
            A handle whose `remove()` unregisters the handler.
        """
        if name is None:
            name = getattr(callback, "__qualname__", repr(callback))
        handle = ChangeStateHandle(self, callback, prepare, priority, name)
        # Insert before the first handler of a higher priority: ascending, stable.
        position = next(
            (i for i, other in enumerate(self._handlers) if priority < other.priority),
            len(self._handlers),
        )
        self._handlers.insert(position, handle)
        return handle

    def notify(self, *, running: bool, state: RunState) -> tuple[ChangeStateFailure, ...]:
        """Run the handlers (QEMU's vm_state_notify): forward on start, backward on stop.

        Every prepare callback, then every main callback, runs even if some raise HookError.

        Returns:
            The failures, (handler name, HookError) in call order; empty when all succeeded.
        """
        ordered = list(self._handlers) if running else list(reversed(self._handlers))
        failures: list[ChangeStateFailure] = []
        for handle in ordered:
            if handle.prepare is not None:
                _call_handler(handle.name, handle.prepare, running, state, failures)
        for handle in ordered:
            _call_handler(handle.name, handle.callback, running, state, failures)
        return tuple(failures)

    def _remove_handler(self, handle: ChangeStateHandle) -> None:
        if handle in self._handlers:
            self._handlers.remove(handle)


def _call_handler(
    name: str,
    callback: ChangeStateCallback,
    running: bool,  # noqa: FBT001 - QEMU's callback signature
    state: RunState,
    failures: list[ChangeStateFailure],
) -> None:
    try:
        callback(running, state)
    except HookError as error:
        failures.append((name, error))
