"""The stream sender's stop-and-copy: RAM keeps a batch queued ahead, devices wait for the RAM.

Sans-IO: the sender appends actions to an outbox; the test plays the runner and answers each
`Flush` with its completion (`sent`), as the runner does once the channel drained that far.
"""

from __future__ import annotations

from migration import actions as act
from migration.metrics import SourceMetrics
from migration.outbox import Outbox
from migration.params import MigrationCapabilities, MigrationParameters
from migration.precopy import FINAL_BATCH_PAGES, QUEUE_AHEAD_BYTES
from migration.sender import MAIN, StreamSender
from migration.sender_phases import StreamSent
from vmsim import PAGE_SIZE, Machine, MachineConfig, RunState

PARAMS = MigrationParameters()
RAM_MIB = 16


def stopped_sender() -> tuple[StreamSender, Outbox, SourceMetrics]:
    """A sender whose setup went out and whose VM is stopped with all of its RAM still dirty."""
    machine = Machine.boot(MachineConfig(ram_mib=RAM_MIB))
    out = Outbox(0.0)
    metrics = SourceMetrics(
        page_size=PAGE_SIZE,
        total_bytes=machine.config.ram_bytes,
        started_at=0.0,
        expected_downtime_ms=PARAMS.downtime_limit_ms,
    )
    sender = StreamSender(
        outbox=out,
        machine=machine,
        metrics=metrics,
        migration_id="m1",
        caps=MigrationCapabilities(return_path=False),
        timeouts=None,
        params=PARAMS,
    )
    sender.opened(return_path=False)
    assert sender.sent(MAIN, PARAMS) is not None  # SetupDone
    machine.stop_for_migration()
    assert RunState.FINISH_MIGRATE == machine.runstate.state
    out.take()
    return sender, out, metrics


def flushes(actions: list[act.Action]) -> list[int]:
    """The keep_bytes of each Flush among `actions`."""
    return [a.keep_bytes for a in actions if isinstance(a, act.Flush)]


def test_final_ram_keeps_a_batch_queued_and_devices_follow_a_full_drain() -> None:
    sender, out, metrics = stopped_sender()
    sender.start_completion()
    ram_flushes: list[int] = []
    while not flushes(actions := out.take()) or flushes(actions) == [QUEUE_AHEAD_BYTES]:
        ram_flushes += flushes(actions)
        assert metrics.downtime.final_ram_sent_at is None
        out.begin(out.now + 0.001)
        sender.sent(MAIN, PARAMS)
    parts = RAM_MIB * 256 // FINAL_BATCH_PAGES
    assert [QUEUE_AHEAD_BYTES] * parts == ram_flushes  # never drained to empty between parts

    assert [0] == flushes(actions)  # the first device record waits for the RAM to leave
    assert metrics.downtime.final_ram_sent_at is None
    drained_at = out.now + 0.001
    out.begin(drained_at)
    sender.sent(MAIN, PARAMS)
    assert drained_at == metrics.downtime.final_ram_sent_at

    milestone = None
    while milestone is None:  # device records, then EOF
        out.take()
        milestone = sender.sent(MAIN, PARAMS)
    assert isinstance(milestone, StreamSent)
