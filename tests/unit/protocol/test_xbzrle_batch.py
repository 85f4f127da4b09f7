"""XBZRLE for many pages at once gives the bytes page-by-page XBZRLE gives, and refuses the same."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.pair import Batch, deliver_ram
from hypothesis import given
from hypothesis import strategies as st

from protocol import LocalProtocolError, PageKind, xbzrle
from protocol.xbzrle_batch import OVERFLOW, SCALAR_BELOW, decode_batch, encode_batch
from vmsim import GuestRam, RamLoader

_EDIT = st.tuples(st.integers(0, 4095), st.integers(1, 64), st.integers(0, 255))
"""One change to a page: (offset, length, value), clipped to the page."""


def _pages(seed: int, n_pages: int, page_size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n_pages, page_size), dtype=np.uint8)


def _edited(old: np.ndarray, edits: list[list[tuple[int, int, int]]]) -> np.ndarray:
    new = old.copy()
    page_size = old.shape[1]
    for row, row_edits in enumerate(edits):
        for offset, length, value in row_edits:
            start = offset % page_size
            new[row, start : start + length] ^= np.uint8(value | 1)  # a change at every byte
    return new


def _assert_same_as_page_by_page(old: np.ndarray, new: np.ndarray) -> None:
    lengths, blob = encode_batch(old, new)
    at = 0
    for row in range(len(old)):
        expected = xbzrle.encode(old[row].data, new[row].data)
        if expected is None:
            assert OVERFLOW == lengths[row]
            continue
        assert len(expected) == lengths[row]
        assert expected == blob[at : at + len(expected)]
        at += len(expected)
    assert len(blob) == at
    fits = np.flatnonzero(lengths != OVERFLOW)
    pages = old.copy()
    starts = np.cumsum(lengths[fits]) - lengths[fits]
    decode_batch(pages, fits, np.frombuffer(blob, dtype=np.uint8), starts, lengths[fits])
    assert (pages[fits] == new[fits]).all()


@given(
    seed=st.integers(0, 2**16),
    edits=st.lists(st.lists(_EDIT, max_size=6), min_size=1, max_size=40),
)
def test_a_batch_encodes_and_decodes_as_page_by_page(seed, edits):
    old = _pages(seed, len(edits), 4096)
    _assert_same_as_page_by_page(old, _edited(old, edits))


@pytest.mark.parametrize(
    "case",
    ["byte 0 of each page", "last byte", "word edges", "every other byte", "all", "none"],
)
def test_shapes_that_cross_words_and_pages(case):
    old = _pages(7, 64, 4096)
    new = old.copy()
    if case == "byte 0 of each page":
        new[:, 0] += 1
    elif case == "last byte":
        new[:, -1] += 1
    elif case == "word edges":
        new[:, 7:9] += 1  # one run over two words
        new[:-1, -1] += 1  # a page's last byte and the next page's first are two runs
        new[1:, 0] += 1
    elif case == "every other byte":
        new[:, ::2] += 1  # overflow: 2048 runs of one byte
    elif case == "all":
        new += 1
    _assert_same_as_page_by_page(old, new)


@pytest.mark.parametrize("page_size", [64, 4096, 65536])
def test_page_sizes(page_size):
    old = _pages(3, SCALAR_BELOW + 3, page_size)
    new = old.copy()
    new[:, page_size // 2 : page_size // 2 + 130] += 1  # a changed run of 130: two-byte lengths
    new[:, page_size - 1] += 1
    _assert_same_as_page_by_page(old, new)


@pytest.mark.parametrize(
    ("delta", "match"),
    [
        (bytes([0x00, 0x05, 1, 2]), "does not fit"),
        (bytes([0x80, 0x80, 0x80, 0x01]), "truncated or longer"),
        (bytes([0x90, 0x20, 0x01, 7]), "does not fit"),
        (bytes([0x05, 0x00]), "does not fit"),
        (bytes([0x05]), "truncated"),
        (bytes([0x00, 0x01, 9, 0x80]), "truncated"),  # a good run, then half a length
    ],
)
@pytest.mark.parametrize("copies", [1, SCALAR_BELOW * 2])
def test_hostile_deltas_are_refused_like_page_by_page(delta, match, copies):
    good = bytes([0x00, 0x01, 9])
    deltas = [good] * copies + [delta]
    blob = np.frombuffer(b"".join(deltas), dtype=np.uint8)
    lengths = np.array([len(d) for d in deltas], dtype=np.int64)
    pages = np.zeros((len(deltas), 4096), dtype=np.uint8)
    with pytest.raises(LocalProtocolError, match=match):
        decode_batch(pages, np.arange(len(deltas)), blob, np.cumsum(lengths) - lengths, lengths)


@given(deltas=st.lists(st.binary(max_size=12), min_size=SCALAR_BELOW, max_size=SCALAR_BELOW * 3))
def test_any_deltas_decode_as_page_by_page_or_are_refused(deltas):
    page_size = 64
    blob = np.frombuffer(b"".join(deltas), dtype=np.uint8)
    lengths = np.array([len(d) for d in deltas], dtype=np.int64)
    batch_pages = np.zeros((len(deltas), page_size), dtype=np.uint8)
    expected = np.zeros_like(batch_pages)
    try:
        for row, delta in enumerate(deltas):
            xbzrle.decode_into(expected[row].data, delta)
    except LocalProtocolError:
        with pytest.raises(LocalProtocolError):
            decode_batch(
                batch_pages, np.arange(len(deltas)), blob, np.cumsum(lengths) - lengths, lengths
            )
        return
    decode_batch(batch_pages, np.arange(len(deltas)), blob, np.cumsum(lengths) - lengths, lengths)
    assert (batch_pages == expected).all()


def test_a_frame_with_its_deltas_in_one_buffer():
    """The source's batches carry every delta in one buffer, after the whole pages."""
    pages = _pages(5, 8, 4096)
    changed = pages[3:6].copy()
    changed[:, 10] += 1
    lengths, blob = encode_batch(pages[3:6], changed)
    batch = Batch(
        first_pfns=np.array([0, 2, 3, 4, 5], dtype=np.uint32),
        n_pages=np.array([2, 1, 1, 1, 1], dtype=np.uint16),
        kinds=np.array([PageKind.NORMAL, PageKind.ZERO, *[PageKind.XBZRLE] * 3], dtype=np.uint8),
        data=(pages[0:2].reshape(-1).data, memoryview(blob)),
        delta_lens=lengths,
    )
    ram = GuestRam(8 * 4096)
    ram.pages[3:6] = pages[3:6]
    received = deliver_ram(batch, RamLoader(ram))

    assert (ram.pages[0:2] == pages[0:2]).all()
    assert (ram.pages[3:6] == changed).all()
    assert 3 == received.xbzrle_pages


def test_deltas_in_one_buffer_must_follow_the_whole_pages():
    pages = _pages(5, 8, 4096)
    batch = Batch(
        first_pfns=np.array([3, 0], dtype=np.uint32),
        n_pages=np.array([1, 1], dtype=np.uint16),
        kinds=np.array([PageKind.XBZRLE, PageKind.NORMAL], dtype=np.uint8),
        data=(pages[0].data, memoryview(bytes([0, 1, 9]))),
        delta_lens=np.array([3], dtype=np.int64),
    )
    with pytest.raises(LocalProtocolError, match="NORMAL run after an XBZRLE run"):
        deliver_ram(batch, RamLoader(GuestRam(8 * 4096)))
