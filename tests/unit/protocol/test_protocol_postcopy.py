"""Postcopy on the wire: page ranges at their bounds, and the order the tables impose."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers.pair import ConnectionPair, make_batch, make_config

from protocol import (
    ErrorCode,
    LocalProtocolError,
    MainState,
    PageKind,
    PagesDiscarded,
    PagesRequested,
    ReceivedBitmap,
    RemoteProtocolError,
)
from protocol.postcopy import (
    MAX_DISCARD_RANGES,
    MAX_REQUEST_RANGES,
    PageRanges,
    pack_ranges,
    ranges_mask,
    ranges_of_mask,
    ranges_of_pages,
    unpack_ranges,
)

RAM_PAGES = 16


def ranges(*pairs: tuple[int, int]) -> bytes:
    first = np.array([p[0] for p in pairs], dtype=np.int64)
    count = np.array([p[1] for p in pairs], dtype=np.int64)
    return pack_ranges(first, count)


def test_ranges_round_trip_and_coalesce():
    first, count = ranges_of_pages(np.array([1, 2, 3, 7, 9, 10]))
    assert [1, 7, 9] == first.tolist()
    assert [3, 1, 2] == count.tolist()
    decoded = unpack_ranges(pack_ranges(first, count), max_ranges=8, ascending=True, what="x")
    assert [1, 2, 3, 7, 9, 10] == decoded.pages().tolist()
    assert 6 == decoded.n_pages
    assert ranges_of_pages(np.zeros(0, dtype=np.int64))[0].size == 0


def page_ranges(*pairs: tuple[int, int]) -> PageRanges:
    first = np.array([p[0] for p in pairs], dtype=np.int64)
    end = first + np.array([p[1] for p in pairs], dtype=np.int64)
    return PageRanges(first_pfn=first, end_pfn=end, n_pages=int((end - first).sum()))


def test_a_mask_of_ranges_marks_their_pages_however_many_there_are():
    """The few-ranges path (slices) and the many-ranges one (a cumulative sum) agree."""
    few = [page_ranges((1, 3), (7, 1)), page_ranges((9, 7))]  # the last ends at RAM's end
    assert [1, 2, 3, 7, 9, 10, 11, 12, 13, 14, 15] == np.flatnonzero(ranges_mask(few, 16)).tolist()
    many = [page_ranges(*[(2 * i, 1) for i in range(100)]), page_ranges((1, 4), (150, 50))]
    expected = {2 * i for i in range(100)} | {1, 2, 3, 4} | set(range(150, 200))
    assert sorted(expected) == np.flatnonzero(ranges_mask(many, 200)).tolist()  # overlapping
    assert not ranges_mask([], 8).any()


def test_a_mask_refuses_a_range_past_ram():
    with pytest.raises(ValueError, match="past page 16"):
        ranges_mask([page_ranges((10, 7))], 16)


def test_the_runs_of_a_mask_are_its_ranges():
    rng = np.random.default_rng(7)
    for _ in range(300):
        n_pages = int(rng.integers(1, 200))
        mask = rng.random(n_pages) < rng.random()
        first, count = ranges_of_mask(mask)
        assert (count > 0).all()
        assert (first[1:] > first[:-1] + count[:-1]).all()  # ascending, never touching
        back = ranges_mask(
            [page_ranges(*zip(first.tolist(), count.tolist(), strict=True))], n_pages
        )
        assert back.tolist() == mask.tolist()


@pytest.mark.parametrize(
    ("data", "ascending", "match"),
    [
        (b"\x00" * 7, False, "7 bytes of ranges is not whole 8-byte records"),
        (b"", False, "0 ranges"),
        (ranges(*[(i * 2, 1) for i in range(MAX_REQUEST_RANGES + 1)]), False, "65 ranges"),
        (ranges((3, 0)), False, "range 0 is empty"),
        (ranges((0xFFFF_FFFF, 2)), False, "past page 2\\*\\*32"),
        (ranges((4, 2), (5, 1)), True, "range 1 does not start after"),
        (ranges((4, 2), (6, 1)), True, "range 1 does not start after"),  # touching
    ],
)
def test_bad_ranges_are_refused_naming_what_is_wrong(data, ascending, match):
    with pytest.raises(LocalProtocolError, match=match) as info:
        unpack_ranges(data, max_ranges=MAX_REQUEST_RANGES, ascending=ascending, what="REQ_PAGES")
    assert ErrorCode.BAD_METADATA == info.value.code


def test_the_largest_discard_is_legal_and_one_more_is_not():
    first = np.arange(MAX_DISCARD_RANGES, dtype=np.int64) * 2
    data = pack_ranges(first, np.ones_like(first))
    assert MAX_DISCARD_RANGES == len(
        unpack_ranges(data, max_ranges=MAX_DISCARD_RANGES, ascending=True, what="d").first_pfn
    )
    more = pack_ranges(np.append(first, first[-1] + 2), np.ones(len(first) + 1, dtype=np.int64))
    with pytest.raises(LocalProtocolError, match="8193 ranges"):
        unpack_ranges(more, max_ranges=MAX_DISCARD_RANGES, ascending=True, what="d")


def advised_pair() -> ConnectionPair:
    pair = ConnectionPair()
    pair.source.send_configuration(make_config(ram_pages=RAM_PAGES))
    pair.source.send_open_return_path()
    pair.source.send_postcopy_advise()
    pair.transfer()
    pair.dest.send_open_ack()
    setup = {"ram_size": RAM_PAGES * 4096, "page_size": 4096}
    pair.source.send_section_start(1, "ram", 0, 4, setup)
    pair.transfer()
    return pair


def test_a_discard_past_ram_is_refused_on_both_sides():
    pair = advised_pair()
    with pytest.raises(LocalProtocolError, match="past the guest's 16 pages"):
        pair.source.send_postcopy_discard(np.array([15]), np.array([2]))
    pair.source.send_postcopy_discard(np.array([15]), np.array([1]))
    events = pair.transfer()[0]
    assert [15] == next(e for e in events if isinstance(e, PagesDiscarded)).ranges.pages().tolist()


def run_postcopy(pair: ConnectionPair) -> None:
    pair.source.send_postcopy_listen()
    pair.source.send_postcopy_run()
    pair.transfer()


def test_page_requests_reach_the_source_and_past_ram_is_refused():
    pair = advised_pair()
    run_postcopy(pair)
    assert MainState.POSTCOPY_RUNNING == pair.dest.their_state
    pair.dest.send_req_pages(np.array([2, 9]), np.array([1, 3]))
    replies = pair.transfer()[1]
    request = next(e for e in replies if isinstance(e, PagesRequested))
    assert [2, 9, 10, 11] == request.ranges.pages().tolist()
    with pytest.raises(LocalProtocolError, match="REQ_PAGES: a range ends past"):
        pair.dest.send_req_pages(np.array([16]), np.array([1]))


def test_a_hostile_request_past_ram_fails_the_source_with_bad_metadata():
    pair = advised_pair()
    run_postcopy(pair)
    pair.dest._ret.accept = lambda *_a: None  # a hostile destination skips its own checks
    pair.dest.send_req_pages(np.array([40]), np.array([1]))
    with pytest.raises(RemoteProtocolError, match="past the guest's 16 pages") as info:
        pair.transfer()
    assert ErrorCode.BAD_METADATA == info.value.code


def test_no_abort_after_run_and_no_switch_without_advise():
    pair = advised_pair()
    run_postcopy(pair)
    with pytest.raises(LocalProtocolError, match="ABORT is illegal in main-stream state"):
        pair.source.send_abort(ErrorCode.CANCELLED, "migrate_cancel")
    plain = ConnectionPair()
    plain.source.send_configuration(make_config(ram_pages=RAM_PAGES))
    plain.source.send_open_return_path()
    with pytest.raises(LocalProtocolError, match=r"POSTCOPY_LISTEN is illegal in .* state SETUP"):
        plain.source.send_postcopy_listen()


def test_a_postcopy_migration_may_still_end_as_precopy():
    pair = advised_pair()
    pair.source.send_ram(1, make_batch(None, [(0, 1, PageKind.ZERO)]), end=False)
    pair.source.send_switchover_start()
    pair.transfer()
    assert MainState.SWITCHOVER == pair.dest.their_state


def recover_pair() -> ConnectionPair:
    """A recover channel of a 16-page migration whose RAM is section 1, taken up by both."""
    pair = ConnectionPair()
    config = make_config(ram_pages=RAM_PAGES)
    pair.source.open_recovery(config, 1)
    events = pair.transfer()[0]
    assert [MainState.RECOVER_OPENED] == [pair.dest.their_state]
    assert any(getattr(e, "role", None) == "recover" for e in events)
    pair.dest.resume(config, None, 1)
    return pair


def test_a_recover_channel_carries_the_bitmap_back_then_the_missing_pages():
    pair = recover_pair()
    pair.dest.send_recv_bitmap(0, RAM_PAGES, bytes([0b1111_0011, 0xFF]))
    bitmap = next(e for e in pair.transfer()[1] if isinstance(e, ReceivedBitmap))
    assert (0, RAM_PAGES) == (bitmap.first_pfn, bitmap.n_pages)
    assert bytes([0b1111_0011, 0xFF]) == bitmap.bitmap
    pair.source.send_postcopy_resume()
    pair.source.send_ram(1, make_batch(None, [(2, 2, PageKind.ZERO)]), end=False)
    pair.source.send_ram(1, make_batch(None, []), end=True)
    pair.source.send_eof()
    pair.transfer()
    assert MainState.COMPLETED == pair.dest.their_state


@pytest.mark.parametrize(
    ("first_pfn", "n_pages", "bitmap", "match"),
    [
        (0, 16, b"\xff", "1 bytes of bitmap for 16 pages"),
        (4, 8, b"\xff", "do not start on a byte"),
        (8, 16, b"\xff\xff", "go past the guest's 16 pages"),
    ],
)
def test_a_bad_bitmap_is_refused(first_pfn, n_pages, bitmap, match):
    pair = recover_pair()
    with pytest.raises(LocalProtocolError, match=match) as info:
        pair.dest.send_recv_bitmap(first_pfn, n_pages, bitmap)
    assert ErrorCode.BAD_METADATA == info.value.code


def test_pages_wait_for_postcopy_resume_and_a_recover_channel_needs_its_migration():
    pair = recover_pair()
    with pytest.raises(LocalProtocolError, match=r"SECTION_PART is illegal .* RECOVER_OPENED"):
        pair.source.send_ram(1, make_batch(None, [(2, 1, PageKind.ZERO)]), end=False)
    other = ConnectionPair()
    other.source.open_recovery(make_config(ram_pages=RAM_PAGES), 1)
    other.transfer()
    wrong = dataclasses.replace(make_config(ram_pages=RAM_PAGES), migration_id="mig-0002")
    with pytest.raises(LocalProtocolError, match="names migration 'mig-0002'"):
        other.dest.resume(wrong, None, 1)
