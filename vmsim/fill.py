"""Initial RAM contents: zero, random, pattern, or real bytes (`image`, `mixed`).

Random is seeded, every page unique and non-zero; real bytes are read by the caller and handed
over with their digest checked.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import xxhash

from vmsim.config import CONTENT_FILLS, PAGE_SIZE, Fill
from vmsim.errors import ConfigError
from vmsim.prng import draws, mix64_array, stream_key
from vmsim.ram import WORDS_PER_PAGE, GuestRam

__all__ = ["MIXED_ZERO_EVERY_PAGES", "content_bytes_wanted", "fill_content_digest", "fill_ram"]

#: The mixed preset: every 4th page is a zero page (25 %), the others hold file bytes.
MIXED_ZERO_EVERY_PAGES: Final = 4

_RANDOM_BLOCK_BYTES: Final = 16 * 1024 * 1024
_LANE_BLOCK: Final = 0x46494C4C  # "FILL"
_LANE_PAGE: Final = 0x50414745  # "PAGE"
_PATTERN_TAG: Final = 0x4C4D_0000_0000_0000  # "LM" in the top bytes, pfn below


def fill_ram(
    ram: GuestRam, fill: Fill, seed: int, content: bytes | memoryview | None = None
) -> None:
    """Fill RAM at boot (not dirty-logged: logging is off at boot).

    Raises:
        ConfigError: an `image` or `mixed` fill without its content.
    """
    if fill is Fill.RANDOM:
        _fill_random(ram, seed)
    elif fill is Fill.PATTERN:
        _fill_pattern(ram)
    elif fill in CONTENT_FILLS:
        if content is None:
            raise ConfigError(f"a {fill} fill needs its bytes (read by the caller)")
        data = np.frombuffer(content, dtype=np.uint8)[: content_bytes_wanted(fill, ram.n_pages)]
        if fill is Fill.IMAGE:
            ram.array[: data.size] = data  # the rest stays zero
        else:
            _fill_mixed(ram, data)
    # Fill.ZERO: numpy already handed out zeroed memory.


def content_bytes_wanted(fill: Fill, n_pages: int) -> int:
    """How many bytes of content an `image` (at most) or `mixed` fill of `n_pages` lays out."""
    if fill is Fill.MIXED:
        return (n_pages - n_pages // MIXED_ZERO_EVERY_PAGES) * PAGE_SIZE
    return n_pages * PAGE_SIZE


def fill_content_digest(content: bytes | memoryview) -> str:
    """The digest a configuration names for an `image` or `mixed` fill's bytes."""
    return xxhash.xxh3_128_hexdigest(content)


def _fill_mixed(ram: GuestRam, data: np.ndarray) -> None:
    pages = ram.array.reshape(ram.n_pages, PAGE_SIZE)
    data_pages = np.flatnonzero(
        np.arange(ram.n_pages) % MIXED_ZERO_EVERY_PAGES != MIXED_ZERO_EVERY_PAGES - 1
    )
    whole = data.size // PAGE_SIZE
    pages[data_pages[:whole]] = data[: whole * PAGE_SIZE].reshape(whole, PAGE_SIZE)
    if data.size % PAGE_SIZE and whole < data_pages.size:
        pages[data_pages[whole], : data.size % PAGE_SIZE] = data[whole * PAGE_SIZE :]


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
