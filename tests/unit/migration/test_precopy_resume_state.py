"""Precopy resume's bookkeeping: which pages go again after a break, and when to retry."""

from __future__ import annotations

import numpy as np
import pytest

from migration.precopy_resume import (
    RECONNECT_MAX_S,
    ReconnectBudget,
    SentFrames,
    batch_pfns,
)
from protocol import PageKind
from vmsim import PageBatch


def _batch(*runs: tuple[int, int]) -> PageBatch:
    first = np.array([f for f, _ in runs], dtype=np.uint32)
    count = np.array([c for _, c in runs], dtype=np.uint16)
    return PageBatch(
        first_pfns=first,
        n_pages=count,
        kinds=np.full(len(runs), PageKind.NORMAL, dtype=np.uint8),
        data=(),
        normal_pages=int(count.sum()),
        zero_pages=0,
    )


def test_batch_pfns_expands_every_run_in_order():
    assert [7, 8, 9, 2, 20, 21] == batch_pfns(_batch((7, 3), (2, 1), (20, 2))).tolist()
    assert [] == batch_pfns(_batch()).tolist()


def test_pages_whose_last_copy_went_after_the_loaded_frames_go_again():
    frames = SentFrames(32)
    frames.sent(_batch((0, 4)))  # frame 1
    frames.sent(_batch((4, 4)))  # frame 2
    frames.sent(_batch((0, 2)))  # frame 3: pages 0-1 again (their newer copy)

    # Frames 1-2 arrived, 3 was lost: pages 0-1 must go again even though the destination
    # holds a copy of them (frame 1's, older).
    assert [0, 1] == frames.unconfirmed(2).tolist()
    assert 2 == frames.ram_frames  # the stream's count restarts where the destination is
    frames.sent(_batch((8, 1)))  # frame 3 again, on the new connection
    assert [8] == frames.unconfirmed(2).tolist()
    assert [] == frames.unconfirmed(3).tolist()


def test_everything_arrived_means_nothing_goes_again():
    frames = SentFrames(8)
    frames.sent(_batch((0, 8)))
    assert [] == frames.unconfirmed(1).tolist()


def test_the_budget_backs_off_and_ends_at_its_deadline():
    budget = ReconnectBudget()
    assert budget.lost(100.0, budget_s=2.0)
    assert budget.reconnecting
    assert budget.due_at == pytest.approx(100.1)
    budget.attempt()
    assert budget.lost(100.2, budget_s=2.0)  # the attempt failed: 200 ms later
    assert budget.due_at == pytest.approx(100.4)
    for now in (100.5, 101.0, 101.5):
        budget.attempt()
        assert budget.lost(now, budget_s=2.0)
        assert budget.due_at is not None
        assert budget.due_at - now <= RECONNECT_MAX_S
        assert budget.due_at <= 102.0  # never past the deadline
    budget.attempt()
    assert not budget.lost(102.0, budget_s=2.0)  # the deadline counts from the first break
    assert 1 == budget.breaks


def test_a_resumed_connection_that_breaks_again_gets_a_whole_budget():
    budget = ReconnectBudget()
    budget.lost(0.0, budget_s=1.0)
    budget.attempt()
    budget.resumed()
    assert not budget.reconnecting
    assert budget.lost(5.0, budget_s=1.0)
    assert budget.due_at == pytest.approx(5.1)
    assert 2 == budget.breaks
