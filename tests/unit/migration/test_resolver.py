"""The source's resolve sessions, driven by hand with a manual clock (no sockets)."""

from __future__ import annotations

from migration.actions import CloseChannel, Flush, OpenChannel, Receive
from migration.outbox import Outbox
from migration.resolve import NOTIFY_ABORT_ATTEMPTS, Purpose, Resolver, Result
from protocol import (
    ConnectionClosed,
    DestinationResumed,
    ErrorCode,
    Outcome,
    OutcomeReported,
    Timeouts,
)

TIMEOUTS = Timeouts(ping_interval_s=0.1, peer_timeout_s=2.0)


def resolver(purpose: Purpose, out: Outbox) -> Resolver:
    return Resolver(
        outbox=out,
        migration_id="m1",
        purpose=purpose,
        timeouts=TIMEOUTS,
        interval_s=0.5,
        abort=(ErrorCode.CANCELLED, "cancelled"),
        first_at=1.0,
    )


def at(out: Outbox, now: float) -> Outbox:
    out.take()
    out.begin(now)
    return out


def test_the_first_session_opens_when_due_and_asks():
    out = Outbox(0.0)
    r = resolver(Purpose.SETTLE, out)

    assert 1.0 == r.next_deadline()
    r.timer()
    assert [] == out.take()  # not yet
    at(out, 1.0)
    r.timer()
    (opened,) = out.take()
    assert isinstance(opened, OpenChannel)

    at(out, 1.1)
    r.opened(opened.channel)
    assert [Receive(channel=opened.channel), Flush(channel=opened.channel)] == out.take()
    assert 3.1 == r.next_deadline()  # the answer is due within the peer timeout


def test_in_doubt_sends_handover_again_and_resumed_commits():
    out = Outbox(1.0)
    r = resolver(Purpose.SETTLE, out)
    r.timer()
    channel = out.take()[0].channel
    r.opened(channel)

    at(out, 1.2)
    assert r.reply(channel, OutcomeReported(migration_id="m1", outcome=Outcome.IN_DOUBT)) is None
    assert r.session is not None
    assert r.session.handover_sent
    outcome = r.reply(channel, DestinationResumed(runstate="running"))
    assert outcome is not None
    assert Result.COMMITTED == outcome.result
    assert CloseChannel(channel=channel) in out.take()


def test_a_failed_attempt_is_retried_after_the_interval_for_ever_when_settling():
    out = Outbox(1.0)
    r = resolver(Purpose.SETTLE, out)
    for attempt in range(10):
        now = 1.0 + attempt
        at(out, now)
        r.timer()
        channel = out.take()[0].channel
        assert r.failed(channel, "refused") is None
        assert now + 0.5 == r.next_deadline()
    assert 10 == r.attempts


def test_notifying_an_abort_gives_up_after_its_attempts():
    out = Outbox(1.0)
    r = resolver(Purpose.NOTIFY_ABORT, out)
    outcome = None
    for attempt in range(NOTIFY_ABORT_ATTEMPTS):
        at(out, 1.0 + attempt)
        r.timer()
        channel = out.take()[0].channel
        outcome = r.failed(channel, "refused")
    assert outcome is not None
    assert Result.FAILED == outcome.result
    assert "gave up after 5 attempts" == outcome.detail


def test_an_in_doubt_destination_gets_an_abort_when_notifying():
    out = Outbox(1.0)
    r = resolver(Purpose.NOTIFY_ABORT, out)
    r.timer()
    channel = out.take()[0].channel
    r.opened(channel)
    session = r.session

    outcome = r.reply(channel, OutcomeReported(migration_id="m1", outcome=Outcome.IN_DOUBT))

    assert outcome is not None
    assert Result.ABORT_SENT == outcome.result
    assert session is not None
    assert session.conn.pending_send_bytes > 0
    assert CloseChannel(channel=channel, linger_s=1.0) in out.take()


def test_silence_past_the_deadline_fails_the_session():
    out = Outbox(1.0)
    r = resolver(Purpose.SETTLE, out)
    r.timer()
    channel = out.take()[0].channel
    r.opened(channel)

    at(out, 3.5)
    assert r.timer() is None  # retried later, not settled
    assert 4.0 == r.next_deadline()
    assert r.reply(channel, ConnectionClosed(clean=False)) is None  # an old channel: ignored
