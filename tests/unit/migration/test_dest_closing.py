"""The destination closes its channel only once its last reply left.

A PING answered while the handover was under way made two flushes: the PONG's and RESUMED's.
The PONG flush ended (`SendDone`) after RESUMED was queued, and the channel was closed with
RESUMED still in it: the source saw the end of the stream without it and stayed in doubt for a
second (`python -m bench downtime`). Sans-IO: the test plays the runner.
"""

from __future__ import annotations

from migration import actions as act
from migration import inputs as inp
from migration.dest import Closing, DestMigration, Done
from migration.ledger import IncomingLedger
from migration.sender import MAIN
from protocol import DestConnection, ErrorCode


def closing_with(queued: bool) -> DestMigration:
    """A destination whose last reply is on its way, still queued or already sent."""
    conn = DestConnection(now=0.0)
    migration = DestMigration(
        ledger=IncomingLedger(),
        conn=conn,
        channel=MAIN,
        from_file=False,
        busy_reason=lambda: None,
        now=0.0,
    )
    if queued:
        conn.send_failed(ErrorCode.INTERNAL, "the last reply")  # any reply: bytes queued
    migration.phase = Closing()
    return migration


def test_an_earlier_flush_ending_does_not_close_over_a_queued_reply() -> None:
    migration = closing_with(queued=True)

    actions = migration.handle(inp.SendDone(channel=MAIN), now=1.0)

    assert isinstance(migration.phase, Closing)
    assert [act.Flush(channel=MAIN)] == actions  # the reply is flushed, then the channel closes


def test_the_channel_closes_once_nothing_is_queued() -> None:
    migration = closing_with(queued=False)

    actions = migration.handle(inp.SendDone(channel=MAIN), now=1.0)

    assert isinstance(migration.phase, Done)
    assert any(isinstance(a, act.CloseChannel) for a in actions)
