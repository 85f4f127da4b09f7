"""The destination's ledger: decisions are final, states carry their data, refusals name why."""

from __future__ import annotations

import pytest

from migration.errors import LoadError, TransitionError
from migration.ledger import Committed, Held, IncomingLedger, Install, Loaded, Loading
from migration.outbox import Outbox
from migration.status import MigrationStatus
from migration.table import DestTrigger
from protocol import DeviceRef, ErrorCode, MigrationConfiguration, Outcome
from vmsim import Machine, MachineConfig

VM = "44444444-4444-4444-4444-444444444444"


def config(migration_id: str, uuid: str | None = VM) -> MigrationConfiguration:
    return MigrationConfiguration(
        migration_id=migration_id,
        machine="livemig-virt-1.0",
        page_size=4096,
        ram_size=4 << 20,
        devices=(DeviceRef(idstr="ram", instance_id=0, version_id=4),),
        capabilities=(),
        uuid=uuid,
        vm={},
    )


@pytest.fixture(scope="module")
def machine() -> Machine:
    return Machine.for_incoming(MachineConfig(ram_mib=4))


def loaded(ledger: IncomingLedger, migration_id: str, machine: Machine, out: Outbox):
    record = ledger.begin(config(migration_id), from_file=False, busy_reason=None, out=out)
    ledger.advance(record, DestTrigger.RAM_READY, Loading(machine=machine), out)
    ledger.advance(record, DestTrigger.STREAM_LOADED, Loaded(machine=machine), out)
    return record


def test_commit_is_decided_once_and_then_answers_the_same(machine):
    ledger, out = IncomingLedger(), Outbox(0.0)
    record = loaded(ledger, "m1", machine, out)

    assert Install(machine=machine) == ledger.commit("m1", out)
    ledger.adopted("m1", "running", out)
    assert "running" == ledger.commit("m1", out)  # a second HANDOVER: the same answer
    assert Committed(runstate="running") == record.state
    assert record.machine is None  # the ledger lets go of the machine it handed over
    assert Outcome.COMMITTED == ledger.outcome_of("m1")


def test_a_committed_migration_is_never_discarded(machine):
    ledger, out = IncomingLedger(), Outbox(0.0)
    record = loaded(ledger, "m1", machine, out)
    ledger.commit("m1", out)

    ledger.discard("m1", "late abort", out, cause="cancelled")

    assert MigrationStatus.COMPLETED == record.status
    assert "discard_after_commit_refused" in [a.event for a in out.take() if hasattr(a, "event")]


def test_a_held_copy_keeps_its_machine_and_a_reason(machine):
    ledger, out = IncomingLedger(), Outbox(0.0)
    record = loaded(ledger, "m1", machine, out)

    ledger.hold("m1", "the connection was cut", out)

    assert isinstance(record.state, Held)
    assert record.machine is machine
    assert "handover in doubt: the connection was cut" in (record.reason or "")
    assert record is ledger.held
    assert Outcome.IN_DOUBT == ledger.outcome_of("m1")


def test_resolve_of_an_unfinished_load_discards_it(machine):
    ledger, out = IncomingLedger(), Outbox(0.0)
    record = ledger.begin(config("m1"), from_file=False, busy_reason=None, out=out)

    assert Outcome.DISCARDED == ledger.answer_resolve("m1", out)
    assert MigrationStatus.FAILED == record.status
    assert Outcome.UNKNOWN == ledger.answer_resolve("never-seen", out)


@pytest.mark.parametrize(
    ("busy_reason", "second", "message"),
    [
        ("a VM is already on this daemon", config("m2"), "a VM is already on this daemon"),
        (None, config("m1"), "was already received here"),
    ],
)
def test_refusals_are_busy_and_say_why(machine, busy_reason, second, message):
    ledger, out = IncomingLedger(), Outbox(0.0)
    loaded(ledger, "m1", machine, out)
    ledger.commit("m1", out)

    with pytest.raises(LoadError, match=message) as refused:
        ledger.begin(second, from_file=False, busy_reason=busy_reason, out=out)
    assert ErrorCode.BUSY == refused.value.code


def test_a_second_stream_is_refused_while_one_loads(machine):
    ledger, out = IncomingLedger(), Outbox(0.0)
    ledger.begin(config("m1"), from_file=False, busy_reason=None, out=out)

    with pytest.raises(LoadError, match="already receiving migration m1"):
        ledger.begin(config("m2"), from_file=False, busy_reason=None, out=out)


def test_the_held_vm_is_superseded_by_its_own_next_migration_only(machine):
    ledger, out = IncomingLedger(), Outbox(0.0)
    held = loaded(ledger, "m1", machine, out)
    ledger.hold("m1", "lost", out)

    with pytest.raises(LoadError, match="held in doubt here"):
        ledger.begin(config("m2", uuid=None), from_file=False, busy_reason=None, out=out)
    with pytest.raises(LoadError, match="held in doubt here"):
        ledger.begin(config("m2"), from_file=True, busy_reason=None, out=out)
    ledger.begin(config("m2"), from_file=False, busy_reason=None, out=out)

    assert MigrationStatus.FAILED == held.status
    assert "superseded by migration m2" == held.reason


def test_a_state_that_does_not_show_as_the_tables_status_is_a_bug(machine):
    ledger, out = IncomingLedger(), Outbox(0.0)
    record = ledger.begin(config("m1"), from_file=False, busy_reason=None, out=out)

    with pytest.raises(TransitionError, match="does not show as 'active'"):
        record.move(DestTrigger.RAM_READY, Held(machine=machine, reason="x"))
    with pytest.raises(TransitionError, match="cannot take"):
        record.move(DestTrigger.HANDOVER, Committed())
    assert MigrationStatus.SETUP == record.status


def test_a_discarded_migration_keeps_its_reason_and_cause(machine):
    ledger, out = IncomingLedger(), Outbox(0.0)
    record = loaded(ledger, "m1", machine, out)
    assert record.failure_cause is None

    ledger.discard("m1", "source aborted: cancelled by the user", out, cause="cancelled")

    assert MigrationStatus.FAILED == record.status
    assert ("source aborted: cancelled by the user", "cancelled") == (
        record.reason,
        record.failure_cause,
    )
