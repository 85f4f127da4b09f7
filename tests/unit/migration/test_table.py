"""The status tables: the mechanism, the handover rules they encode, and their copy in the docs.

Which rows the machines actually take is checked by tests/integration (every row, driven by real
migrations); here the expectations are written out, not derived from the tables under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migration.errors import TransitionError
from migration.status import MigrationStatus as S
from migration.table import (
    DEST_ROWS,
    SOURCE_ROWS,
    DestTrigger,
    Row,
    Side,
    SourceTrigger,
    StatusMachine,
    _index,
    render_markdown,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"
POSTCOPY = {S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER_SETUP, S.POSTCOPY_RECOVER}


def test_the_tables_in_the_doc_match_the_code():
    text = DOC.read_text()
    begin, end = "<!-- tables:begin -->\n", "\n<!-- tables:end -->"
    assert render_markdown() == text[text.index(begin) + len(begin) : text.index(end)]


def test_a_machine_moves_along_its_rows_and_remembers_them():
    machine = StatusMachine(Side.SOURCE)

    assert S.SETUP == machine.fire(SourceTrigger.MIGRATE)
    assert S.ACTIVE == machine.fire(SourceTrigger.SETUP_DONE)
    assert [
        Row(S.NONE, SourceTrigger.MIGRATE, S.SETUP),
        Row(S.SETUP, SourceTrigger.SETUP_DONE, S.ACTIVE),
    ] == machine.history


def test_a_trigger_the_table_does_not_list_raises_and_changes_nothing():
    machine = StatusMachine(Side.SOURCE)
    machine.fire(SourceTrigger.MIGRATE)

    assert not machine.can_fire(SourceTrigger.RESUMED)
    with pytest.raises(TransitionError, match="'setup' cannot take 'RESUMED"):
        machine.fire(SourceTrigger.RESUMED)
    assert S.SETUP == machine.status
    assert 1 == len(machine.history)


def test_two_rows_for_one_status_and_trigger_are_refused():
    rows = (
        Row(S.NONE, SourceTrigger.MIGRATE, S.SETUP),
        Row(S.NONE, SourceTrigger.MIGRATE, S.FAILED),
    )
    with pytest.raises(TransitionError, match="two rows"):
        _index(rows)


def test_only_device_goes_in_doubt_and_only_a_handover_or_its_resolution_completes():
    """docs/handover.md: in doubt only after HANDOVER (of a precopy or a postcopy
    migration); completed only by RESUMED, a stream written to a file, or the resolution of a
    doubt."""
    into_doubt = {(r.status, r.trigger) for r in SOURCE_ROWS if r.after is S.IN_DOUBT}
    completing = {r.trigger for r in SOURCE_ROWS if r.after is S.COMPLETED and not r.reserved}

    assert {
        (S.DEVICE, SourceTrigger.LOST_AFTER_HANDOVER),
        (S.POSTCOPY_ACTIVE, SourceTrigger.LOST_AFTER_HANDOVER),
    } == into_doubt
    assert {
        SourceTrigger.RESUMED,
        SourceTrigger.STREAM_SENT,
        SourceTrigger.OUTCOME_COMMITTED,
        SourceTrigger.OPERATOR_COMPLETE,
    } == completing


def test_cancel_is_possible_before_handover_only():
    cancellable = {r.status for r in SOURCE_ROWS if r.trigger is SourceTrigger.CANCEL}

    assert {S.SETUP, S.ACTIVE, S.PRE_SWITCHOVER, S.DEVICE} == cancellable


def test_the_destination_runs_the_vm_only_after_a_handover_a_file_or_an_operator():
    """...or, in postcopy, once every page arrived and the source went away (it ran here
    since POSTCOPY_RUN)."""
    completing = {
        (r.status, r.trigger) for r in DEST_ROWS if r.after is S.COMPLETED and not r.reserved
    }

    assert {
        (S.ACTIVE, DestTrigger.HANDOVER),
        (S.IN_DOUBT, DestTrigger.HANDOVER),
        (S.POSTCOPY_ACTIVE, DestTrigger.HANDOVER),
        (S.ACTIVE, DestTrigger.FILE_LOADED),
        (S.IN_DOUBT, DestTrigger.OPERATOR_COMMIT),
        (S.POSTCOPY_ACTIVE, DestTrigger.SOURCE_LOST),
    } == completing


@pytest.mark.parametrize("rows", [SOURCE_ROWS, DEST_ROWS], ids=["source", "destination"])
def test_postcopy_and_its_recovery_are_rows_of_the_table(rows):
    postcopy = [r for r in rows if r.status in POSTCOPY or r.after in POSTCOPY]

    assert POSTCOPY <= {r.status for r in postcopy} | {r.after for r in postcopy}
    assert not any(r.reserved for r in postcopy)


def test_the_destination_runs_a_postcopy_guest_only_after_postcopy_run():
    into_postcopy = {r.trigger for r in DEST_ROWS if r.after is S.POSTCOPY_ACTIVE}

    assert {DestTrigger.POSTCOPY_RUN, DestTrigger.RECOVERED} == into_postcopy


@pytest.mark.parametrize("rows", [SOURCE_ROWS, DEST_ROWS], ids=["source", "destination"])
def test_nothing_leaves_an_end(rows):
    ends = {S.COMPLETED, S.FAILED, S.CANCELLED}

    assert set() == {r for r in rows if r.status in ends}
