"""The run state the source had when migration stopped it ("globalstate").

QEMU's migration/global_state.c: `stop_for_migration` stores the runstate here before the stop,
the section travels like any device, and the destination uses it to decide whether to start
the VM. It is migration metadata, not machine state, so the digest leaves it out.
"""

from __future__ import annotations

from typing import Final

from vmsim.errors import InvalidStateError
from vmsim.runstate import RunState
from vmsim.vmstate.description import VMStateDescription
from vmsim.vmstate.fields import field_buffer, field_uint

__all__ = ["GLOBALSTATE_VMSD", "GlobalState"]

RUNSTATE_BYTES: Final = 100


class GlobalState:
    """The stored run state: its name NUL-padded to 100 bytes, and its length with the NUL.

    Attributes:
        size: length of the name plus its terminating NUL (0 if nothing was stored).
        runstate: the name, NUL-padded to RUNSTATE_BYTES.
        received: whether a globalstate section was loaded (not migrated).
    """

    def __init__(self) -> None:
        self.size = 0
        self.runstate = bytes(RUNSTATE_BYTES)
        self.received = False

    def store(self, state: RunState) -> None:
        """Remember the current run state (global_state_store)."""
        name = str(state).encode()
        self.size = len(name) + 1
        self.runstate = name.ljust(RUNSTATE_BYTES, b"\0")

    def stored_runstate(self) -> RunState | None:
        """The stored run state, or None if nothing (valid) was stored."""
        name = self.runstate[: max(self.size - 1, 0)].decode(errors="replace")
        try:
            return RunState(name)
        except ValueError:
            return None


def _globalstate_post_load(state: GlobalState, _version_id: int) -> None:
    if not 0 < state.size <= RUNSTATE_BYTES or state.stored_runstate() is None:
        raise InvalidStateError(
            f"field 'runstate': not a run state: {state.runstate[:32]!r}",
            device="globalstate",
            field="runstate",
        )
    state.received = True


GLOBALSTATE_VMSD: Final[VMStateDescription[GlobalState]] = VMStateDescription(
    name="globalstate",
    version_id=1,
    minimum_version_id=1,
    fields=(field_uint("size", 32), field_buffer("runstate", RUNSTATE_BYTES)),
    post_load=_globalstate_post_load,
)
