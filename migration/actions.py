"""Outputs of the migration state machines: what the runner must do, as plain values.

The machines never await and never touch a socket, a clock or a logger: ``handle()`` returns a
list of these and the runner (vmm) executes them in order. Actions with a result report it back
as an input (`OpenChannel` → `ChannelOpened`/`ChannelOpenFailed`, `Flush` → `SendDone`,
`StopVm` → `VmStopped`/`VmStopFailed`, `PrepareMachine` → `MachinePrepared`, `RunMigratedVm` →
`VmAdopted`, `DecideHandover` → `HandoverDecided`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from migration.inputs import ChannelKey
    from protocol import SourceConnection
    from vmsim import Machine, MachineConfig, RunState


@dataclass(frozen=True, kw_only=True, slots=True)
class Action:
    """Base of every output."""


# --------------------------------------------------------------------------- channels


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenChannel(Action):
    """Connect a new channel to the migration's address and drive `conn` over it."""

    channel: ChannelKey
    conn: SourceConnection


@dataclass(frozen=True, kw_only=True, slots=True)
class Receive(Action):
    """Read `channel` and feed what its connection reports (`PeerEventReceived`) until it ends.

    Nothing is read until the machine asks: a source reads a return path (a file has none); a
    destination reads a file only once its RAM is ready.
    """

    channel: ChannelKey


@dataclass(frozen=True, kw_only=True, slots=True)
class Flush(Action):
    """Send what `channel`'s connection has queued; `SendDone` once `keep_bytes` remain."""

    channel: ChannelKey
    keep_bytes: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class FlushNowait(Action):
    """Send what the kernel takes now on `channel`, best effort, and report nothing."""

    channel: ChannelKey


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseChannel(Action):
    """Close `channel` (after sending what is queued, within `linger_s`, when `linger_s` > 0)."""

    channel: ChannelKey
    linger_s: float = 0.0


# --------------------------------------------------------------------------- the VM


@dataclass(frozen=True, kw_only=True, slots=True)
class StopVm(Action):
    """Stop the VM for the switchover (QEMU `migration_stop_vm`: finish-migrate, STOP)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResumeVm(Action):
    """Put the VM back in the run state it had before the migration stopped it."""

    runstate: RunState


@dataclass(frozen=True, kw_only=True, slots=True)
class SetVmRunState(Action):
    """Leave the (stopped) VM in `runstate`, e.g. postmigrate after a completed migration."""

    runstate: RunState


@dataclass(frozen=True, kw_only=True, slots=True)
class ThrottleVm(Action):
    """Slow the running guest down (auto-converge, dirty-limit), or lift it (0 and None).

    Attributes:
        cpu_percent: the share of the time the vCPUs sleep (QEMU `cpu_throttle_set`).
        dirty_limit_mb_per_s: each vCPU's page-write cap (QEMU's migration dirty limit).
    """

    cpu_percent: int = 0
    dirty_limit_mb_per_s: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PrepareMachine(Action):
    """Build an empty machine for `config` and pre-fault its RAM (in a thread)."""

    config: MachineConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class RunMigratedVm(Action):
    """Install the migrated `machine` as this daemon's VM and run it (or keep its run state).

    In postcopy (`postcopy`) its pages are still arriving: the runner feeds `PagesNeeded` when
    the guest blocks on missing ones, and `WakeVm` says that pages arrived.
    """

    machine: Machine
    postcopy: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchVmFaults(Action):
    """Postcopy recovery: the guest's page faults come to this runner from now on."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WakeVm(Action):
    """Postcopy: pages arrived; a guest blocked on missing pages may run again."""


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, kw_only=True, slots=True)
class DecideHandover(Action):
    """Ask the ownership arbiter whether the VM may pass to the destination.

    Today the arbiter is local and always agrees once the checks passed; with several hosts it
    becomes one compare-and-swap in an external store (docs/architecture.md).
    """

    migration_id: str


# --------------------------------------------------------------------------- reporting


@dataclass(frozen=True, kw_only=True, slots=True)
class EmitEvent(Action):
    """Send a QMP event to every client (the runner checks nothing: the machine did)."""

    name: str
    data: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusChanged(Action):
    """Migration `migration_id` reached `status`: counted and recorded, events on or off."""

    status: str
    migration_id: str


class Level(enum.StrEnum):
    """Log levels of `LogFact`."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, kw_only=True, slots=True)
class LogFact(Action):
    """A structured log line: one stable snake_case event name and its fields."""

    event: str
    level: Level = Level.INFO
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class Finished(Action):
    """The machine has nothing left to do: the runner may stop."""
