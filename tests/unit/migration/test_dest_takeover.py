"""A recover channel takes a migration over from a machine still driving it (sans-IO).

The router stands the old machine down with `TakenOver` before the new one loads anything. The
old machine must leave the record paused (postcopy-paused, or a precopy kept for the source),
never in the middle of a recovery: a record left `Recovering` with no machine behind it refused
every later recover channel, and a postcopy whose destination was stopped for 3.5 s never
completed (the fault matrix, pause-dest in postcopy, CI of 2026-12-04).
"""

from __future__ import annotations

from types import SimpleNamespace

from migration import dest
from migration import inputs as inp
from migration.dest_phases import Receiving
from migration.ledger import (
    IncomingLedger,
    IncomingRecord,
    Loading,
    Postcopy,
    PostcopyPaused,
    PrecopyPaused,
    Recovering,
    RecoverySetup,
)
from migration.outbox import Outbox
from migration.precopy_resume import PRECOPY_RESUME_CAPABILITY
from migration.sender import MAIN
from migration.table import DestTrigger as D
from protocol import DestConnection
from tests.helpers.pair import make_config

GUEST = SimpleNamespace(postcopy=object())  # a machine whose postcopy still misses pages


def _record(ledger: IncomingLedger, *capabilities: str) -> IncomingRecord:
    config = make_config(capabilities=capabilities)
    record = ledger.begin(config, from_file=False, busy_reason=None, out=Outbox(0.0))
    record.move(D.RAM_READY, Loading(machine=GUEST))  # type: ignore[arg-type]
    record.ram_section_id = 1
    return record


def _driving(ledger: IncomingLedger, record: IncomingRecord) -> dest.DestMigration:
    machine = dest.DestMigration(
        ledger=ledger,
        conn=DestConnection(now=0.0),
        channel=MAIN,
        from_file=False,
        busy_reason=lambda: None,
        now=0.0,
        precopy_resume_s=10.0,
    )
    assert record.config is not None
    machine.phase = Receiving(record=record, config=record.config)
    return machine


def test_a_machine_in_the_middle_of_a_postcopy_recovery_leaves_it_paused() -> None:
    ledger = IncomingLedger()
    record = _record(ledger)
    for trigger, state in (
        (D.POSTCOPY_RUN, Postcopy(machine=GUEST)),  # type: ignore[arg-type]
        (D.CHANNEL_LOST, PostcopyPaused(machine=GUEST, reason="cut")),  # type: ignore[arg-type]
        (D.RECOVER, RecoverySetup(machine=GUEST)),  # type: ignore[arg-type]
        (D.RECOVERY_CONNECTED, Recovering(machine=GUEST)),  # type: ignore[arg-type]
    ):
        record.move(trigger, state)
    old = _driving(ledger, record)

    old.handle(inp.TakenOver(), now=1.0)

    assert isinstance(record.state, PostcopyPaused)
    assert old.finished
    ledger.recover(record.migration_id, Outbox(1.0))  # the new channel takes it up
    assert isinstance(record.state, Recovering)


def test_a_machine_loading_a_resumable_precopy_keeps_the_copy_for_the_new_channel() -> None:
    ledger = IncomingLedger()
    record = _record(ledger, PRECOPY_RESUME_CAPABILITY)
    old = _driving(ledger, record)

    old.handle(inp.TakenOver(), now=1.0)

    assert isinstance(record.state, PrecopyPaused)
    ledger.recover(record.migration_id, Outbox(1.0))
    assert isinstance(record.state, Loading)
    assert record.generation == 1


def test_a_machine_taken_over_no_longer_writes_the_received_bytes() -> None:
    """The old connection of a resumed precopy may still be open (a stalled link) and take
    inputs; its own count must not replace the total that the new connection keeps."""
    ledger = IncomingLedger()
    record = _record(ledger, PRECOPY_RESUME_CAPABILITY)
    old = _driving(ledger, record)
    old.conn.receive_data(b"LVMG\x00\x03\x00\x00" + bytes(100), 0.5)
    old.handle(inp.TakenOver(), now=1.0)
    ledger.recover(record.migration_id, Outbox(1.0))
    record.metrics.received_bytes = 5000  # what the new connection counts, with the old one's

    old.handle(inp.ShutdownRequested(), now=2.0)

    assert 5000 == record.metrics.received_bytes
