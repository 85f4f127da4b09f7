"""The postcopy half of `SourceMigration`: the commands, the pause, and recovery by itself.

`migrate-start-postcopy` asks for the switch (`migration.source_postcopy` makes it); a broken
connection after POSTCOPY_RUN pauses the migration with the VM stopped here and its pages kept;
`migrate {uri, resume: true}`, or `x-auto-recover` by itself with backoff, takes it up again on
a `recover` channel (docs/protocol.md 1.10, docs/handover.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from migration import actions as act
from migration import inputs as inp
from migration.errors import CommandRefusedError
from migration.sender import MAIN
from migration.source_phases import PostcopyPaused, Streaming
from migration.source_postcopy import check_start
from migration.status import MigrationStatus
from migration.table import SourceTrigger as T
from protocol import ErrorCode

if TYPE_CHECKING:
    from migration.metrics import SourceMetrics
    from migration.outbox import Outbox
    from migration.params import MigrationCapabilities, MigrationParameters
    from migration.sender import StreamSender
    from migration.source_phases import Phase
    from migration.source_postcopy import AutoRecover
    from migration.table import SourceTrigger, StatusMachine

S_PAUSED: Final = MigrationStatus.POSTCOPY_PAUSED
POSTCOPY_STATUSES: Final = frozenset(
    {
        MigrationStatus.POSTCOPY_ACTIVE,
        S_PAUSED,
        MigrationStatus.POSTCOPY_RECOVER_SETUP,
        MigrationStatus.POSTCOPY_RECOVER,
    }
)


def never_ran_there(code: ErrorCode, status: MigrationStatus) -> bool:
    """Whether a postcopy recovery learnt that the destination's copy never ran.

    POSTCOPY_RUN never reached it: the recover was refused with DISCARDED, or answered with
    RESUME_POINT (`migration.source_resume.NEVER_SWITCHED`). That copy never runs (a
    discarded record never does; one still loading gets neither RUN nor HANDOVER now), so the
    stopped VM here is the only one: it resumes here rather than wait paused for ever
    (docs/handover.md).
    """
    return code is ErrorCode.DISCARDED and status is MigrationStatus.POSTCOPY_RECOVER


class PostcopyControl:
    """`SourceMigration` provides the attributes and `_fire` declared here."""

    phase: Phase
    status: StatusMachine
    metrics: SourceMetrics
    params: MigrationParameters
    caps: MigrationCapabilities
    sender: StreamSender
    auto_recover: AutoRecover
    _out: Outbox

    def _fire(self, trigger: SourceTrigger) -> None:
        raise NotImplementedError

    def check_resume(self) -> None:
        """Raise unless a paused postcopy can be resumed (`migrate resume=true`).

        Raises:
            CommandRefusedError: QEMU's message, when it is not paused.
        """
        if self.status.status is not S_PAUSED:
            raise CommandRefusedError("Cannot resume if there is no paused migration")

    def check_start_postcopy(self) -> None:
        """Raise if `migrate-start-postcopy` is refused now (QEMU's checks and messages).

        Raises:
            CommandRefusedError: no postcopy-ram capability, or not in setup or active.
        """
        check_start(self.caps, self.status.status)

    def _on_postcopy_command(self, event: inp.Input) -> None:
        if isinstance(event, inp.StartPostcopyRequested):
            self.sender.postcopy_wanted = self.caps.postcopy_ram
        elif isinstance(self.phase, PostcopyPaused):  # migrate resume=true
            self._fire(T.RESUME)
            self.phase = Streaming()
            self._out.do(act.OpenChannel(channel=MAIN, conn=self.sender.reconnect()))

    def _pause_postcopy(self, reason: str) -> None:
        self.metrics.error_desc = (
            f"postcopy paused: {reason}; the VM stays stopped here with the pages the "
            "destination has not received (they are lost if this process exits); "
            "migrate resume=true takes it up again"
        )
        setup = self.status.status is MigrationStatus.POSTCOPY_RECOVER_SETUP
        self._fire(T.RECOVER_FAILED if setup else T.CHANNEL_LOST)
        self._out.log("postcopy_paused", level=act.Level.WARNING, error=reason)
        self.sender.close_channels()
        self.phase = PostcopyPaused(reason=reason)
        if self.params.auto_recover:
            self.auto_recover.paused(self._out.now)

    def _auto_recover_tick(self) -> None:
        """`x-auto-recover`: try again once the backoff ran out."""
        due_at = self.auto_recover.due_at
        if due_at is None or self._out.now < due_at:
            return
        self.auto_recover.attempt()
        self._out.log("postcopy_auto_recover", attempt=self.auto_recover.attempts)
        self._on_postcopy_command(inp.ResumeRequested())
