"""livemig resolve: the one safe action for every pair of side states (docs/handover.md)."""

from __future__ import annotations

import pytest

from livemig.resolve import DestView, ResolveError, SourceView, decide

COMMIT = "dest: x-migrate-incoming-resolve {action: commit}"
DISCARD = "dest: x-migrate-incoming-resolve {action: discard}"
COMPLETE = "source: x-migrate-resolve {action: complete}"
RESUME = "source: x-migrate-resolve {action: resume}"
VM = "11111111-1111-1111-1111-111111111111"


def src(status: str | None, migration_id: str | None = "m1", **kw: object) -> SourceView:
    return SourceView(status=status, migration_id=migration_id, **kw)  # type: ignore[arg-type]


def dst(outcome: str | None = None, *, held: str | None = None, **kw: object) -> DestView:
    fields = {"reachable": True, "outcome": outcome, "held_migration_id": held}
    if held is not None:
        fields["held_uuid"] = VM
    return DestView(**{**fields, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "dest", "expected"),
    [
        # The source is in doubt about m1: the destination's outcome FOR m1 decides.
        (src("in-doubt"), dst("committed"), [COMPLETE]),
        (src("in-doubt"), dst("in-doubt", held="m1"), [COMMIT, COMPLETE]),
        (src("in-doubt"), dst("discarded"), [RESUME]),
        (src("in-doubt"), dst("unknown"), [RESUME]),  # e.g. a restarted destination
        (src("in-doubt"), DestView(reachable=False, dead=True), [RESUME]),
        # The destination holds m1 in doubt: discard only on evidence the source owns the VM.
        (src("failed"), dst(held="m1"), [DISCARD]),
        (src("cancelled"), dst(held="m1"), [DISCARD]),
        (src("completed", "m2", vm_uuid=VM), dst(held="m1"), [DISCARD]),  # it has VM U
        (src("completed"), dst(held="m1"), [COMMIT]),  # it let its copy go
        (SourceView(status=None, dead=True), dst(held="m1"), [COMMIT]),
        # Nothing in doubt.
        (src("completed"), dst("committed"), []),
    ],
)
def test_decisions(source: SourceView, dest: DestView, expected: list[str]) -> None:
    assert expected == [action.describe() for action in decide(source, dest)]


def test_the_outcome_of_the_source_migration_counts_not_the_newest_one() -> None:
    """A destination that ran the VM and took another migration since must not be read as
    'never saw it': its outcome for the in-doubt id is what counts (review finding A1)."""
    assert [COMPLETE] == [a.describe() for a in decide(src("in-doubt"), dst("committed"))]


def test_a_still_loading_destination_is_not_read_as_discarded() -> None:
    with pytest.raises(ResolveError, match="still loading"):
        decide(src("in-doubt"), dst("loading"))


def test_a_restarted_source_is_not_proof_it_owns_the_vm() -> None:
    """A source daemon restarted after a crash reports nothing: the held copy must not be
    discarded on that (review finding A2)."""
    with pytest.raises(ResolveError, match="pass --source-dead"):
        decide(src("none", None), dst(held="m1"))


def test_an_unreachable_side_is_not_assumed_dead() -> None:
    with pytest.raises(ResolveError, match="if it is dead, pass --dest-dead"):
        decide(src("in-doubt"), DestView(reachable=False))
    with pytest.raises(ResolveError, match="if it is dead, pass --source-dead"):
        decide(SourceView(status=None), dst(held="m1"))
