"""GuestRam: every write method marks the pages it touches; fills; bounds."""

from __future__ import annotations

import numpy as np
import pytest

from vmsim import PAGE_SIZE, Fill, GuestRam, RamError, populate_write, populate_write_supported
from vmsim.fill import fill_ram

N_PAGES = 64


@pytest.fixture
def ram():
    ram = GuestRam(N_PAGES * PAGE_SIZE)
    ram.dirty_log.start()
    return ram


def dirty_pages(ram):
    return np.flatnonzero(ram.dirty_log.sync()).tolist()


def test_shapes_and_views_share_memory(ram):
    ram.view[PAGE_SIZE + 3] = 7

    assert ram.pages.shape == (N_PAGES, PAGE_SIZE)
    assert 7 == ram.pages[1, 3] == ram.array[PAGE_SIZE + 3]
    assert N_PAGES * PAGE_SIZE == ram.size_bytes == len(ram.view)


def test_write_words_marks_each_page(ram):
    words = np.array([0, 511, 512, 5 * 512 + 7], dtype=np.uint64)
    ram.write_words(words, np.arange(4, dtype=np.uint64) + 1)

    assert dirty_pages(ram) == [0, 1, 5]
    assert ram.words[words.astype(np.intp)].tolist() == [1, 2, 3, 4]


def test_write_bytes_marks_every_covered_page(ram):
    ram.write_bytes(PAGE_SIZE - 2, b"abcd")

    assert dirty_pages(ram) == [0, 1]
    assert ram.read_bytes(PAGE_SIZE - 2, 4) == b"abcd"


def test_first_byte_helpers_mark_their_runs(ram):
    ram.add_to_first_bytes(10, 3, 257)
    ram.set_first_bytes(20, 2, 9)

    assert dirty_pages(ram) == [10, 11, 12, 20, 21]
    assert ram.array[10 * PAGE_SIZE : 13 * PAGE_SIZE : PAGE_SIZE].tolist() == [1, 1, 1]
    assert ram.array[20 * PAGE_SIZE : 22 * PAGE_SIZE : PAGE_SIZE].tolist() == [9, 9]


def test_load_and_zero_pages(ram):
    data = bytes(range(256)) * (2 * PAGE_SIZE // 256)
    ram.load_pages(3, memoryview(data))
    ram.zero_pages(4, 1)

    assert dirty_pages(ram) == [3, 4]
    assert data[:PAGE_SIZE] == ram.read_bytes(3 * PAGE_SIZE, PAGE_SIZE)
    assert bytes(PAGE_SIZE) == ram.read_bytes(4 * PAGE_SIZE, PAGE_SIZE)


def test_writes_are_not_logged_while_logging_is_off(ram):
    ram.dirty_log.stop()
    ram.write_bytes(0, b"x")

    assert not ram.dirty_log.active
    assert dirty_pages(ram) == []


@pytest.mark.parametrize(
    "access",
    [
        lambda ram: ram.write_bytes(N_PAGES * PAGE_SIZE - 1, b"xy"),
        lambda ram: ram.read_bytes(-1, 2),
        lambda ram: ram.load_pages(N_PAGES, b"\0" * PAGE_SIZE),
        lambda ram: ram.load_pages(0, b"\0" * 100),
        lambda ram: ram.zero_pages(N_PAGES - 1, 2),
    ],
)
def test_out_of_range_accesses_raise_ram_error(ram, access):
    with pytest.raises(RamError):
        access(ram)


def test_size_must_be_whole_pages():
    with pytest.raises(RamError, match="multiple of 4096"):
        GuestRam(PAGE_SIZE + 1)


def test_prefault_gives_zeroed_ram():
    ram = GuestRam(8 * PAGE_SIZE, prefault=True)

    assert not ram.array.any()


def test_random_fill_has_no_zero_page_and_every_page_differs():
    ram = GuestRam(5 * 1024 * 1024)  # not a multiple of the 16 MiB tile
    fill_ram(ram, Fill.RANDOM, seed=7)

    assert ram.pages.any(axis=1).all()
    assert ram.n_pages == len({bytes(page[:16]) for page in ram.pages})


def test_random_fill_depends_on_the_seed_only():
    first, second, other = (GuestRam(4 * 1024 * 1024) for _ in range(3))
    fill_ram(first, Fill.RANDOM, seed=1)
    fill_ram(second, Fill.RANDOM, seed=1)
    fill_ram(other, Fill.RANDOM, seed=2)

    assert bytes(first.view) == bytes(second.view)
    assert bytes(first.view) != bytes(other.view)


def test_pattern_fill_is_page_dependent_and_compressible():
    ram = GuestRam(16 * PAGE_SIZE)
    fill_ram(ram, Fill.PATTERN, seed=0)

    assert all(len(set(page.view(np.uint64).tolist())) == 1 for page in ram.pages)
    assert len({bytes(page[:8]) for page in ram.pages}) == 16


def test_zero_fill_leaves_ram_zero():
    ram = GuestRam(16 * PAGE_SIZE)
    fill_ram(ram, Fill.ZERO, seed=3)

    assert not ram.array.any()


def test_populate_write_keeps_what_was_received_while_it_ran():
    """A destination populates RAM while pages arrive: populating must never change a byte."""
    if not populate_write_supported():
        pytest.skip("the kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    ram = GuestRam(4096 * PAGE_SIZE)
    ram.load_pages(7, bytes(range(256)) * 16 * 3)

    assert populate_write(ram.array, chunk_bytes=64 * PAGE_SIZE)
    assert bytes(range(256)) * 16 * 3 == bytes(ram.view[7 * PAGE_SIZE : 10 * PAGE_SIZE])
    assert int(ram.array.sum(dtype=np.uint64)) == sum(range(256)) * 16 * 3


def test_ram_on_given_memory_uses_it_as_is_and_refuses_another_size():
    memory = np.zeros(4 * PAGE_SIZE, dtype=np.uint8)
    ram = GuestRam(4 * PAGE_SIZE, memory=memory)

    assert ram.array is memory
    ram.pages[3, 0] = 9
    assert memory[3 * PAGE_SIZE] == 9
    with pytest.raises(RamError, match="memory of 8192 bytes given for RAM of 16384"):
        GuestRam(4 * PAGE_SIZE, memory=np.zeros(2 * PAGE_SIZE, dtype=np.uint8))
