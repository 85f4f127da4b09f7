"""The source's resolve sessions: what became of a migration, asked on a `resolve` channel.

The destination is asked with RESOLVE on a fresh connection (docs/handover.md), and the source
acts on its OUTCOME.

Two purposes share the session:
- settling a handover in doubt (HANDOVER sent, RESUMED never seen): `committed` completes the
  migration; `in-doubt` sends HANDOVER again (the decision was taken) and waits for RESUMED;
  `discarded` or `unknown` means the destination will never run it, so the VM resumes here. An
  unreachable destination is asked again every `x-resolve-interval-ms`, for ever (or until the
  operator settles it with `x-migrate-resolve`);
- notifying an abort: the source gave up after the whole stream went out, so the destination may
  hold a loaded copy in doubt: if it does, send ABORT. Best effort, `NOTIFY_ABORT_ATTEMPTS` tries.

A session is a small sans-IO machine driven by the source machine: it owns the channel's
protocol connection and says what happened (`SessionOutcome`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from migration.actions import CloseChannel, OpenChannel, Receive
from migration.inputs import ChannelKey
from protocol import (
    ChannelRole,
    ConnectionClosed,
    DestinationFailed,
    DestinationResumed,
    ErrorCode,
    Outcome,
    OutcomeReported,
    PeerTimedOut,
    SourceConnection,
    Timeouts,
)

if TYPE_CHECKING:
    from migration.outbox import Outbox
    from protocol import Event as ProtocolEvent

NOTIFY_ABORT_ATTEMPTS: Final = 5


class Purpose(enum.Enum):
    """Why the source asks."""

    SETTLE = "settle"  # a handover in doubt
    NOTIFY_ABORT = "notify-abort"  # an abandoned migration the destination may hold


class Result(enum.Enum):
    """How a session ended."""

    COMMITTED = "committed"  # the destination runs the VM
    DISCARDED = "discarded"  # it will never run it (discarded or unknown)
    ABORT_SENT = "abort-sent"  # NOTIFY_ABORT: ABORT went out (or nothing was held)
    FAILED = "failed"  # no answer: try again later


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """The end of a session: its result and a reason for the logs."""

    result: Result
    detail: str


class ResolveSession:
    """One resolve connection: RESOLVE, OUTCOME, then HANDOVER/RESUMED or ABORT."""

    def __init__(
        self,
        *,
        migration_id: str,
        purpose: Purpose,
        serial: int,
        timeouts: Timeouts,
        abort: tuple[ErrorCode, str],
        now: float,
    ) -> None:
        self.migration_id = migration_id
        self.purpose = purpose
        self.channel = ChannelKey(ChannelRole.RESOLVE, serial)
        self.conn = SourceConnection(return_path=True, timeouts=timeouts, now=now)
        self.deadline_at = now + timeouts.peer_timeout_s
        self._peer_timeout_s = timeouts.peer_timeout_s
        self._abort = abort
        self.outcome: Outcome | None = None
        self.handover_sent = False

    def opened(self, now: float) -> None:
        """The channel is up: ask (the CHANNEL handshake goes first, implied by RESOLVE)."""
        self.conn.send_resolve(self.migration_id)
        self.deadline_at = now + self._peer_timeout_s

    def on_peer_event(self, event: ProtocolEvent, now: float) -> SessionOutcome | None:
        """A reply arrived; the session's end, or None while it goes on."""
        if isinstance(event, OutcomeReported):
            return self._on_outcome(event.outcome, now)
        if isinstance(event, DestinationResumed):
            return SessionOutcome(Result.COMMITTED, f"RESUMED ({event.runstate})")
        if isinstance(event, DestinationFailed):
            return SessionOutcome(Result.FAILED, f"destination failed: {event.reason}")
        if isinstance(event, ConnectionClosed | PeerTimedOut):
            return SessionOutcome(Result.FAILED, "the resolve connection closed")
        return None

    def timed_out(self) -> SessionOutcome:
        """No answer before `deadline_at`."""
        return SessionOutcome(Result.FAILED, f"no answer within {self._peer_timeout_s:g} s")

    def _on_outcome(self, outcome: Outcome, now: float) -> SessionOutcome | None:
        self.outcome = outcome
        if self.purpose is Purpose.NOTIFY_ABORT:
            if outcome is Outcome.IN_DOUBT:
                self.conn.send_abort(*self._abort)
            return SessionOutcome(Result.ABORT_SENT, f"outcome {outcome}")
        if outcome is Outcome.COMMITTED:
            return SessionOutcome(Result.COMMITTED, "outcome committed")
        if outcome is Outcome.IN_DOUBT:
            self.conn.send_handover()  # the decision was taken (rule 5): hand over again
            self.handover_sent = True
            self.deadline_at = now + self._peer_timeout_s
            return None
        return SessionOutcome(Result.DISCARDED, f"outcome {outcome}")


class Resolver:
    """Resolve sessions of one migration, one at a time, retried every `interval_s`.

    It owns the session's channel and timers; the source machine owns what an outcome means.
    Attempts are unlimited when settling a handover in doubt, `NOTIFY_ABORT_ATTEMPTS` when
    notifying an abort.
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        migration_id: str,
        purpose: Purpose,
        timeouts: Timeouts,
        interval_s: float,
        abort: tuple[ErrorCode, str],
        first_at: float,
    ) -> None:
        self._out = outbox
        self._migration_id = migration_id
        self.purpose = purpose
        self._timeouts = timeouts
        self._interval_s = interval_s
        self._abort = abort
        self.session: ResolveSession | None = None
        self._retry_at: float | None = first_at
        self.attempts = 0
        self._serial = 0

    def next_deadline(self) -> float | None:
        """The session's answer deadline, or when the next attempt starts."""
        return self.session.deadline_at if self.session is not None else self._retry_at

    def owns(self, channel: ChannelKey) -> bool:
        """Whether `channel` is the current session's."""
        return self.session is not None and self.session.channel == channel

    def timer(self) -> SessionOutcome | None:
        """Start the next attempt when due, or fail a session that waited too long."""
        now = self._out.now
        if self.session is None:
            if self._retry_at is not None and now >= self._retry_at:
                self._open()
            return None
        if now >= self.session.deadline_at:
            return self.failed(self.session.channel, self.session.timed_out().detail)
        return None

    def opened(self, channel: ChannelKey) -> None:
        """The session's channel is up: RESOLVE."""
        if self.session is not None and self.owns(channel):
            self.session.opened(self._out.now)
            self._out.do(Receive(channel=channel))
            self._out.flush(channel)

    def reply(self, channel: ChannelKey, reply: ProtocolEvent) -> SessionOutcome | None:
        """A reply on the session's channel; a settled outcome, or None while it goes on."""
        session = self.session
        if session is None or not self.owns(channel):
            return None
        outcome = session.on_peer_event(reply, self._out.now)
        if outcome is None:
            self._out.flush(channel)  # the HANDOVER or nothing it queued
            return None
        self._out.log("resolve_outcome", purpose=self.purpose.value, detail=outcome.detail)
        if outcome.result is Result.FAILED:
            return self.failed(channel, outcome.detail)
        linger_s = 1.0 if outcome.result is Result.ABORT_SENT else 0.0
        self.close(linger_s=linger_s)
        return outcome

    def failed(self, channel: ChannelKey, detail: str) -> SessionOutcome | None:
        """The session's channel broke or timed out: retry later, or give up (notify-abort)."""
        if not self.owns(channel):
            return None
        self._out.log("resolve_attempt_failed", purpose=self.purpose.value, error=detail)
        self.close()
        if self.purpose is Purpose.NOTIFY_ABORT and self.attempts >= NOTIFY_ABORT_ATTEMPTS:
            return SessionOutcome(Result.FAILED, f"gave up after {self.attempts} attempts")
        self._retry_at = self._out.now + self._interval_s
        return None

    def close(self, *, linger_s: float = 0.0) -> None:
        """Drop the current session (no retry is scheduled)."""
        if self.session is not None:
            self._out.do(CloseChannel(channel=self.session.channel, linger_s=linger_s))
            self.session = None
        self._retry_at = None

    def _open(self) -> None:
        self._serial += 1
        self.attempts += 1
        self.session = ResolveSession(
            migration_id=self._migration_id,
            purpose=self.purpose,
            serial=self._serial,
            timeouts=self._timeouts,
            abort=self._abort,
            now=self._out.now,
        )
        self._retry_at = None
        self._out.do(OpenChannel(channel=self.session.channel, conn=self.session.conn))
