"""What the destination's replies on the main channel mean to the source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import (
    ConnectionClosed,
    DestinationFailed,
    DestinationResumed,
    ErrorCode,
    PeerTimedOut,
)

if TYPE_CHECKING:
    from migration.metrics import SourceMetrics


@dataclass(frozen=True, slots=True)
class FailureNote:
    """The reply ends the migration here: why, and the code sent back in ABORT.

    `network`: the connection was lost (closed, or the peer fell silent), not refused; a
    precopy may reconnect (`migration.precopy_resume`).
    """

    reason: str
    code: ErrorCode
    network: bool = False


def describe_reply(reply: object, io_error: str | None = None) -> FailureNote | str | None:
    """A failure, the destination's run state (RESUMED), or None for a reply that changes nothing.

    OPEN_ACK and LOADED are handled by the machine itself; PONG changes nothing.
    """
    match reply:
        case DestinationResumed(runstate=runstate):
            return runstate
        case DestinationFailed(code=code, reason=reason):
            return FailureNote(f"destination failed: {reason}", code)
        case PeerTimedOut(idle_s=idle_s):
            return FailureNote(
                f"destination timed out: nothing received for {idle_s:.1f} s",
                ErrorCode.TIMEOUT,
                network=True,
            )
        case ConnectionClosed():
            why = f" ({io_error})" if io_error else ""
            return FailureNote(
                f"connection to the destination closed{why}", ErrorCode.PROTOCOL_ERROR, network=True
            )
        case _:
            return None


def check_digest(
    metrics: SourceMetrics, dest_digest: str | None, own_digest: str | None
) -> FailureNote | None:
    """Under `x-digest-check`: note the comparison in `metrics`; the failure on a mismatch."""
    if own_digest is None:
        return None
    match = dest_digest == own_digest
    metrics.digest_check = "match" if match else "mismatch"
    if match:
        return None
    return FailureNote(
        f"state digest mismatch at handover: destination {dest_digest}, source {own_digest}",
        ErrorCode.DIGEST_MISMATCH,
    )
