"""Postcopy placement: only new pages are written, a slice per run, whatever the frame holds."""

from __future__ import annotations

import numpy as np

from vmsim.savevm.ram_loader import _place_rows


def reference(pages, pfns, rows, new):
    expected = pages.copy()
    expected[pfns[new]] = rows[new]
    return expected


def test_placing_rows_equals_the_masked_gather_for_any_frame() -> None:
    rng = np.random.default_rng(11)
    for _ in range(400):
        n_pages, n_rows = 64, int(rng.integers(1, 40))
        if rng.random() < 0.5:  # a run from somewhere, as the push sends them
            start = int(rng.integers(0, n_pages - n_rows + 1))
            pfns = np.arange(start, start + n_rows, dtype=np.int64)
        else:  # requested pages: any distinct pages, in any order
            pfns = rng.choice(n_pages, size=n_rows, replace=False).astype(np.int64)
        rows = rng.integers(0, 255, size=(n_rows, 8), dtype=np.uint8)
        new = rng.random(n_rows) < rng.choice([0.0, 0.5, 0.9, 1.0])
        pages = rng.integers(0, 255, size=(n_pages, 8), dtype=np.uint8)
        expected = reference(pages, pfns, rows, new)
        _place_rows(pages, pfns, rows, new)
        assert (pages == expected).all()
