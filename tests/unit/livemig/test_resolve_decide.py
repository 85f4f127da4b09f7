"""livemig resolve: the one safe action for every pair of side states (docs/handover.md)."""

from __future__ import annotations

import pytest

from livemig.resolve import ResolveError, SideState, decide

COMMIT = "dest: x-migrate-incoming-resolve {action: commit}"
DISCARD = "dest: x-migrate-incoming-resolve {action: discard}"
COMPLETE = "source: x-migrate-resolve {action: complete}"
RESUME = "source: x-migrate-resolve {action: resume}"


def side(status: str | None, migration_id: str | None = "m1", *, dead: bool = False) -> SideState:
    return SideState(status=status, migration_id=migration_id, dead=dead)


@pytest.mark.parametrize(
    ("source", "dest", "expected"),
    [
        (side("in-doubt"), side("completed"), [COMPLETE]),  # the destination runs it
        (side("in-doubt"), side("in-doubt"), [COMMIT, COMPLETE]),  # both hold: hand over
        (side("in-doubt"), side("failed"), [RESUME]),  # the destination discarded it
        (side("in-doubt"), side("completed", "m0"), [RESUME]),  # it knows another migration
        (side("in-doubt"), side(None, dead=True), [RESUME]),  # the destination is gone
        (side("failed"), side("in-doubt"), [DISCARD]),  # the source resumed its copy
        (side("running"), side("in-doubt"), [DISCARD]),
        (side(None, dead=True), side("in-doubt"), [COMMIT]),  # the held copy is the last one
        (side("completed"), side("completed"), []),  # nothing in doubt
    ],
)
def test_decisions(source: SideState, dest: SideState, expected: list[str]) -> None:
    assert expected == [action.describe() for action in decide(source, dest)]


def test_an_unreachable_side_is_not_assumed_dead() -> None:
    with pytest.raises(ResolveError, match="if it is dead, pass --dest-dead"):
        decide(side("in-doubt"), side(None))
    with pytest.raises(ResolveError, match="if it is dead, pass --source-dead"):
        decide(side(None), side("in-doubt"))
