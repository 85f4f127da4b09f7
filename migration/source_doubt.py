"""How an in-doubt handover ends at the source (docs/handover.md): what settles it, and how.

A resolve session's outcome or the operator's word becomes a verdict; `SourceMigration`
applies it: the destination runs the VM (completed), or it never will (resumed here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from migration import actions as act
from migration.resolve import Purpose, Resolver, Result
from migration.source_phases import Resolving
from migration.status import MigrationStatus
from migration.table import SourceTrigger as T
from protocol import ErrorCode

if TYPE_CHECKING:
    from migration.convergence import Convergence
    from migration.metrics import SourceMetrics
    from migration.outbox import Outbox
    from migration.params import MigrationParameters
    from migration.resolve import SessionOutcome
    from migration.sender import StreamSender
    from migration.source_phases import Phase
    from migration.table import SourceTrigger, StatusMachine

CANCEL_AFTER_HANDOVER: Final = (
    "the VM is being handed over to the destination, migrate_cancel is not possible now (the "
    "handover is in doubt until the destination's outcome is known)"
)


@dataclass(frozen=True, slots=True)
class DestinationRuns:
    """The destination committed: the migration completed; `outcome` is logged."""

    outcome: str
    trigger: SourceTrigger


@dataclass(frozen=True, slots=True)
class ResumeHere:
    """The destination will never run the VM: it resumes here; `reason` is the error."""

    reason: str
    trigger: SourceTrigger


def settled_by_session(outcome: SessionOutcome) -> DestinationRuns | ResumeHere | None:
    """What a resolve session's outcome decides (None: not settled, keep asking)."""
    if outcome.result is Result.COMMITTED:
        return DestinationRuns("the destination runs the VM", T.OUTCOME_COMMITTED)
    if outcome.result is Result.DISCARDED:
        return ResumeHere(
            f"the destination reports the migration {outcome.detail.removeprefix('outcome ')}:"
            " it will never run the VM, so it was resumed here",
            T.OUTCOME_DISCARDED,
        )
    return None


def settled_by_operator(*, destination_runs: bool) -> DestinationRuns | ResumeHere:
    """What `x-migrate-resolve` decides."""
    if destination_runs:
        return DestinationRuns("the destination runs the VM (operator)", T.OPERATOR_COMPLETE)
    return ResumeHere(
        "resolved by the operator: the destination does not run the VM; resumed here",
        T.OPERATOR_RESUME,
    )


def start_resolver(
    out: Outbox,
    migration_id: str,
    params: MigrationParameters,
    purpose: Purpose,
    first_at: float,
    abort: tuple[ErrorCode, str],
) -> Resolver:
    """Resolve sessions for `purpose`, the first at `first_at` (opened now if it is due now)."""
    resolver = Resolver(
        outbox=out,
        migration_id=migration_id,
        purpose=purpose,
        timeouts=params.timeouts,
        interval_s=params.resolve_interval_s,
        abort=(abort[0], abort[1][:200]),
        first_at=first_at,
    )
    resolver.timer()
    return resolver


class DoubtEndings:
    """The in-doubt half of `SourceMigration`: resolve sessions, the operator, their verdicts.

    `SourceMigration` provides the attributes and the four endings declared here.
    """

    phase: Phase
    status: StatusMachine
    metrics: SourceMetrics
    params: MigrationParameters
    migration_id: str
    sender: StreamSender
    convergence: Convergence
    _out: Outbox

    def _complete(self, trigger: SourceTrigger) -> None:
        raise NotImplementedError

    def _resume_vm(self) -> None:
        raise NotImplementedError

    def _fire(self, trigger: SourceTrigger) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _enter_in_doubt(self, reason: str) -> None:
        self.convergence.lift()
        self.metrics.error_desc = (
            f"handover in doubt: {reason}; the VM stays paused here until the destination's "
            "outcome is known (livemig resolve)"
        )
        self._fire(T.LOST_AFTER_HANDOVER)
        self._out.log("migration_in_doubt", level=act.Level.WARNING, error=reason)
        self.sender.close_channels()
        first_at = self._out.now + self.params.resolve_interval_s
        self._resolve(Purpose.SETTLE, first_at=first_at, abort=(ErrorCode.INTERNAL, ""))

    def _resolve(self, purpose: Purpose, *, first_at: float, abort: tuple[ErrorCode, str]) -> None:
        resolver = start_resolver(
            self._out, self.migration_id, self.params, purpose, first_at, abort
        )
        self.phase = Resolving(resolver=resolver)

    def _settle(self, outcome: SessionOutcome | None) -> None:
        phase = self.phase
        if outcome is None or not isinstance(phase, Resolving):
            return
        if phase.resolver.purpose is Purpose.NOTIFY_ABORT:
            self._finish()  # ABORT sent, nothing held, or gave up: best effort ends here
            return
        self._end_doubt(settled_by_session(outcome))

    def _on_operator(self, *, destination_runs: bool) -> None:
        if self.status.status is not MigrationStatus.IN_DOUBT:
            return
        if isinstance(self.phase, Resolving):
            self.phase.resolver.close()
        self._end_doubt(settled_by_operator(destination_runs=destination_runs))

    def _end_doubt(self, verdict: DestinationRuns | ResumeHere | None) -> None:
        if isinstance(verdict, DestinationRuns):
            self._out.log("in_doubt_resolved", outcome=verdict.outcome)
            self.metrics.downtime.resumed_at = self._out.now
            self._complete(verdict.trigger)
        elif isinstance(verdict, ResumeHere):
            self._resume_from_doubt(verdict.reason, verdict.trigger)

    def _resume_from_doubt(self, reason: str, trigger: SourceTrigger) -> None:
        self._out.log("migration_failed", level=act.Level.WARNING, error=reason, resolved=True)
        self.metrics.error_desc = reason
        self._resume_vm()
        self.metrics.ended_at = self._out.now
        self._fire(trigger)
        self._finish()
