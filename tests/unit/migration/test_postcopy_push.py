"""The background push after the switch: frames sized to the rate precopy measured."""

from __future__ import annotations

import numpy as np
import pytest

from migration.source_postcopy import (
    POSTCOPY_BATCH_PAGES,
    POSTCOPY_FRAME_MS,
    POSTCOPY_MAX_BATCH_PAGES,
    POSTCOPY_MIN_BATCH_PAGES,
    push_batch_pages,
)
from vmsim import PAGE_SIZE, PageBatch, PageKind


@pytest.mark.parametrize(
    ("rate_bytes_per_s", "pages"),
    [
        (0.0, POSTCOPY_BATCH_PAGES),  # nothing measured
        (1.0e9, 976),  # loopback with a busy guest: ~4 MiB, POSTCOPY_FRAME_MS of it
        (1e12, POSTCOPY_MAX_BATCH_PAGES),
        (125e6, 122),  # 1 Gbit/s: 0.5 MiB
        (12.5e6, POSTCOPY_MIN_BATCH_PAGES),  # 100 Mbit/s: 256 KiB, 21 ms on that link
    ],
)
def test_a_frame_takes_about_frame_ms_on_the_link(rate_bytes_per_s: float, pages: int) -> None:
    assert pages == push_batch_pages(rate_bytes_per_s)


def test_the_frame_time_is_what_the_rule_says() -> None:
    pages = push_batch_pages(0.5e9)
    assert pages * PAGE_SIZE / 0.5e9 * 1000 == pytest.approx(POSTCOPY_FRAME_MS, rel=0.01)


def test_max_postcopy_bandwidth_caps_the_rate_frames_are_sized_for() -> None:
    assert push_batch_pages(1.0e9, cap_bytes_per_s=125_000_000) == push_batch_pages(125e6)
    assert push_batch_pages(0.0, cap_bytes_per_s=125_000_000) == push_batch_pages(125e6)
    assert push_batch_pages(1.0e8, cap_bytes_per_s=10**12) == push_batch_pages(1.0e8)


def test_a_batch_of_deltas_carries_its_deltas_bytes() -> None:
    batch = PageBatch(
        first_pfns=np.array([0, 5, 6], dtype=np.uint32),
        n_pages=np.array([2, 1, 1], dtype=np.uint16),
        kinds=np.array([PageKind.NORMAL, 3, 3], dtype=np.uint8),
        data=(),
        normal_pages=2,
        zero_pages=0,
        delta_lens=np.array([3, 40], dtype=np.int64),
    )
    assert 2 * PAGE_SIZE + 43 == batch.data_bytes
    assert 0 == PageBatch.empty().data_bytes
