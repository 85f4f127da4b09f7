"""How an in-doubt handover ends at the source (docs/handover.md): what settles it, and how.

A resolve session's outcome or the operator's word becomes a verdict; `SourceMigration`
applies it: the destination runs the VM (completed), or it never will (resumed here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from migration.resolve import Purpose, Resolver, Result
from migration.table import SourceTrigger as T

if TYPE_CHECKING:
    from migration.outbox import Outbox
    from migration.params import MigrationParameters
    from migration.resolve import SessionOutcome
    from migration.table import SourceTrigger
    from protocol import ErrorCode

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
