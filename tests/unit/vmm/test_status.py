"""The migration status tables: every listed change works, every other one raises."""

from __future__ import annotations

import itertools

import pytest

from vmm.errors import StatusTransitionError
from vmm.status import (
    INCOMING_TRANSITIONS,
    OUTGOING_TRANSITIONS,
    MigrationStatus,
    Side,
    StatusMachine,
    is_active,
    is_terminal,
)

TABLES = {Side.OUTGOING: OUTGOING_TRANSITIONS, Side.INCOMING: INCOMING_TRANSITIONS}


def _machine_at(side: Side, status: MigrationStatus) -> StatusMachine:
    machine = StatusMachine(side)
    machine._status = status
    return machine


@pytest.mark.parametrize("side", list(Side))
def test_every_pair_is_allowed_or_refused(side: Side) -> None:
    table = TABLES[side]
    for old, new in itertools.product(table, MigrationStatus):
        machine = _machine_at(side, old)
        if new in table[old]:
            machine.move(new)
            assert new == machine.status
        else:
            with pytest.raises(StatusTransitionError, match=f"from '{old}' to '{new}'"):
                machine.move(new)
            assert old == machine.status


def test_source_path_of_a_successful_migration() -> None:
    machine = StatusMachine(Side.OUTGOING)
    for status in ("setup", "active", "pre-switchover", "device", "completed"):
        machine.move(MigrationStatus(status))

    assert MigrationStatus.COMPLETED == machine.status


def test_in_doubt_resolves_only_to_completed_or_failed() -> None:
    assert (
        frozenset({MigrationStatus.COMPLETED, MigrationStatus.FAILED})
        == OUTGOING_TRANSITIONS[MigrationStatus.IN_DOUBT]
    )


def test_terminal_and_active() -> None:
    assert is_terminal(MigrationStatus.CANCELLED)
    assert not is_terminal(MigrationStatus.IN_DOUBT)
    assert is_active(MigrationStatus.IN_DOUBT)
    assert not is_active(MigrationStatus.NONE)
    assert not is_active(MigrationStatus.FAILED)
