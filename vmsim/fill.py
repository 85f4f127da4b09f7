"""Initial RAM contents: zero, random (seeded, every page unique and non-zero) or pattern."""

from __future__ import annotations

from typing import Final

import numpy as np

from vmsim.config import Fill
from vmsim.prng import draws, mix64_array, stream_key
from vmsim.ram import WORDS_PER_PAGE, GuestRam

__all__ = ["fill_ram"]

_RANDOM_BLOCK_BYTES: Final = 16 * 1024 * 1024
_LANE_BLOCK: Final = 0x46494C4C  # "FILL"
_LANE_PAGE: Final = 0x50414745  # "PAGE"
_PATTERN_TAG: Final = 0x4C4D_0000_0000_0000  # "LM" in the top bytes, pfn below


def fill_ram(ram: GuestRam, fill: Fill, seed: int) -> None:
    """Fill RAM at boot (not dirty-logged: logging is off at boot)."""
    if fill is Fill.RANDOM:
        _fill_random(ram, seed)
    elif fill is Fill.PATTERN:
        _fill_pattern(ram)
    # Fill.ZERO: numpy already handed out zeroed memory.


def _fill_random(ram: GuestRam, seed: int) -> None:
    # Generating 8 GiB of splitmix output would take seconds; tiling one 16 MiB block runs at
    # memory speed, and the per-page word below keeps every page distinct, so zero-page and
    # duplicate detection cannot shortcut a benchmark.
    block_bytes = min(_RANDOM_BLOCK_BYTES, ram.size_bytes)
    block = draws(stream_key(seed, _LANE_BLOCK), 0, block_bytes // 8).view(np.uint8)
    n_blocks, tail_bytes = divmod(ram.size_bytes, block_bytes)
    ram.array[: n_blocks * block_bytes].reshape(n_blocks, block_bytes)[:] = block
    if tail_bytes:
        ram.array[n_blocks * block_bytes :] = block[:tail_bytes]
    pfns = np.arange(ram.n_pages, dtype=np.uint64)
    pfns += np.uint64(stream_key(seed, _LANE_PAGE))
    # | 1: the first word is never zero, so no page is a zero page.
    ram.words[::WORDS_PER_PAGE] = mix64_array(pfns) | np.uint64(1)


def _fill_pattern(ram: GuestRam) -> None:
    # One repeated word per page: compresses to almost nothing, and differs between pages, so
    # a page sent to the wrong place is noticed.
    words = np.arange(ram.n_pages, dtype=np.uint64)
    words |= np.uint64(_PATTERN_TAG)
    ram.words.reshape(ram.n_pages, WORDS_PER_PAGE)[:] = words[:, np.newaxis]
