"""The destination closes a channel only once its last reply left.

A PING answered while the handover was under way made two flushes: the PONG's and RESUMED's.
The PONG flush ended (`SendDone`) after RESUMED was queued, and the channel was closed with
RESUMED still in it: the source saw the end of the stream without it and stayed in doubt for a
second (`python -m bench downtime`). The resolve responder closes the same way. Sans-IO: the
test plays the runner.
"""

from __future__ import annotations

from typing import Protocol

import pytest

from migration import actions as act
from migration import dest, responder
from migration import inputs as inp
from migration.ledger import IncomingLedger
from migration.sender import MAIN
from protocol import DestConnection, ErrorCode


class Closer(Protocol):
    phase: object

    def handle(self, event: inp.Input, now: float) -> list[act.Action]: ...


def incoming_stream(conn: DestConnection) -> dest.DestMigration:
    stream = dest.DestMigration(
        ledger=IncomingLedger(),
        conn=conn,
        channel=MAIN,
        from_file=False,
        busy_reason=lambda: None,
        now=0.0,
    )
    stream.phase = dest.Closing()
    return stream


def resolve_responder(conn: DestConnection) -> responder.ResolveResponder:
    answering = responder.ResolveResponder(
        ledger=IncomingLedger(), conn=conn, channel=MAIN, now=0.0
    )
    answering.phase = responder.Closing()
    return answering


MACHINES = [
    pytest.param(incoming_stream, dest.Closing, dest.Done, id="incoming stream"),
    pytest.param(resolve_responder, responder.Closing, responder.Done, id="resolve responder"),
]


@pytest.mark.parametrize(("make", "closing", "done"), MACHINES)
def test_an_earlier_flush_ending_does_not_close_over_a_queued_reply(make, closing, done) -> None:
    conn = DestConnection(now=0.0)
    machine: Closer = make(conn)
    conn.send_failed(ErrorCode.INTERNAL, "the last reply")  # any reply: bytes still queued

    actions = machine.handle(inp.SendDone(channel=MAIN), now=1.0)

    assert isinstance(machine.phase, closing)
    assert [act.Flush(channel=MAIN)] == actions  # the reply is flushed, then the channel closes


@pytest.mark.parametrize(("make", "closing", "done"), MACHINES)
def test_the_channel_closes_once_nothing_is_queued(make, closing, done) -> None:
    machine: Closer = make(DestConnection(now=0.0))

    actions = machine.handle(inp.SendDone(channel=MAIN), now=1.0)

    assert isinstance(machine.phase, done)
    assert any(isinstance(a, act.CloseChannel) for a in actions)
