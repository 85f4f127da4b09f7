"""XBZRLE for many pages at once: the same bytes as `protocol.xbzrle`, with no Python per page.

`encode_batch` finds the changed 8-byte words of every page with one comparison, looks at the
bytes of those words only, and writes every delta of the batch into one buffer with a few
vectorised scatters: its deltas are byte for byte what `xbzrle.encode` gives page by page (a
property test holds it to that). `decode_batch` applies many deltas in rounds: each round reads
the next ``zrun nzrun`` pair of every delta that has one left, checks it, and copies all of
their changed bytes with one scatter; the few deltas with many runs that are left after
`SCALAR_BELOW` are finished one by one. Every length is checked against the page and the
delta before anything is copied, as `xbzrle.decode_into` does; the errors are the same.
Pure computation: no I/O, no clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from protocol import xbzrle
from protocol.meta import bad
from protocol.ram import spread_runs

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from protocol.errors import LocalProtocolError

__all__ = ["OVERFLOW", "decode_batch", "encode_batch"]

OVERFLOW: Final = -1
"""`encode_batch`'s length for a page whose delta would not be smaller than the page."""
SCALAR_BELOW: Final = 16
"""Deltas still being decoded when fewer than this many are left go one by one."""
_WORD: Final = 8
_ULEB_ONE_BYTE: Final = 1 << 7
_ULEB_TWO_BYTES: Final = 1 << 14


def encode_batch(old: NDArray[np.uint8], new: NDArray[np.uint8]) -> tuple[NDArray[np.int64], bytes]:
    """The deltas turning each row of `old` into the same row of `new` (pages x page size).

    Returns:
        (lengths, deltas): one length per page (0: unchanged; `OVERFLOW`: the delta would not
        be smaller than the page, so the page goes whole), and the deltas of the other pages
        one after another in page order.
    """
    n_pages, page_size = old.shape
    old, new = np.ascontiguousarray(old), np.ascontiguousarray(new)
    words = page_size // _WORD
    changed_words = np.flatnonzero(
        old.reshape(-1).view(np.uint64) != new.reshape(-1).view(np.uint64)
    )
    old_bytes = old.reshape(-1, _WORD)[changed_words]
    new_bytes = new.reshape(-1, _WORD)[changed_words]
    word_index, byte_in_word = np.nonzero(old_bytes != new_bytes)
    word = changed_words[word_index]
    row = word // words
    offset = (word % words) * _WORD + byte_in_word  # of each changed byte, in its page
    values = new_bytes[word_index, byte_in_word]
    starts = _run_starts(row, offset)
    run_row = row[starts]
    run_start = offset[starts]
    run_len = np.diff(np.append(starts, len(offset)))
    zrun = run_start - _previous_end(run_row, run_start, run_len)
    out_len = _uleb_len(zrun) + _uleb_len(run_len) + run_len
    lengths = np.bincount(run_row, weights=out_len, minlength=n_pages).astype(np.int64)
    overflow = lengths > page_size - 1
    lengths[overflow] = OVERFLOW
    keep = ~overflow[run_row]
    return lengths, _write_runs(zrun[keep], run_len[keep], values[np.repeat(keep, run_len)])


def decode_batch(
    pages: NDArray[np.uint8],
    pfns: NDArray[np.int64],
    deltas: NDArray[np.uint8],
    starts: NDArray[np.int64],
    lengths: NDArray[np.int64],
) -> None:
    """Apply delta i (``lengths[i]`` bytes of `deltas` from ``starts[i]``) to ``pages[pfns[i]]``.

    The caller has checked that every delta lies within `deltas`.

    Raises:
        LocalProtocolError: BAD_METADATA naming what does not fit, as `xbzrle.decode_into`.
    """
    page_size = pages.shape[1]
    flat = pages.reshape(-1)
    cursor = starts.astype(np.int64)  # a copy: it moves along each delta
    end = cursor + lengths
    base = pfns.astype(np.int64) * page_size
    active = np.flatnonzero(lengths > 0)
    while len(active) >= SCALAR_BELOW:
        zrun, cursor[active] = _read_uleb(deltas, cursor[active], end[active])
        nzrun, cursor[active] = _read_uleb(deltas, cursor[active], end[active])
        target = base[active] + zrun
        _check_runs(target - base[active], nzrun, cursor[active], end[active], page_size)
        _copy_runs(flat, target, deltas, cursor[active], nzrun)
        cursor[active] += nzrun
        base[active] = target + nzrun
        active = active[cursor[active] < end[active]]
    view = deltas.data
    for i in active.tolist():
        page_start = int(pfns[i]) * page_size
        done = int(base[i]) - page_start
        page = flat[page_start + done : page_start + page_size].data
        xbzrle.decode_into(page, view[int(cursor[i]) : int(end[i])])


def _run_starts(row: NDArray[np.int64], offset: NDArray[np.int64]) -> NDArray[np.int64]:
    """Index of the first changed byte of each run (a run ends at a gap or a page's end)."""
    if not len(row):
        return np.zeros(0, dtype=np.int64)
    breaks = (np.diff(offset) != 1) | (np.diff(row) != 0)
    return np.concatenate(([0], np.flatnonzero(breaks) + 1))


def _previous_end(
    run_row: NDArray[np.int64], run_start: NDArray[np.int64], run_len: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Where the run before each run ended in the same page (0 for a page's first run)."""
    previous = np.zeros(len(run_row), dtype=np.int64)
    if len(run_row) > 1:
        same_page = run_row[1:] == run_row[:-1]
        previous[1:] = np.where(same_page, (run_start + run_len)[:-1], 0)
    return previous


def _uleb_len(values: NDArray[np.int64]) -> NDArray[np.int64]:
    return 1 + (values >= _ULEB_ONE_BYTE).astype(np.int64) + (values >= _ULEB_TWO_BYTES)


def _write_runs(
    zrun: NDArray[np.int64], nzrun: NDArray[np.int64], values: NDArray[np.uint8]
) -> bytes:
    """``uleb(zrun) uleb(nzrun) bytes`` for each run, one after another."""
    z_len, n_len = _uleb_len(zrun), _uleb_len(nzrun)
    sizes = z_len + n_len + nzrun
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    at = np.cumsum(sizes) - sizes
    _put_uleb(out, at, zrun, z_len)
    _put_uleb(out, at + z_len, nzrun, n_len)
    data_at = at + z_len + n_len
    out[spread_runs(data_at, nzrun)] = values
    return out.tobytes()


def _put_uleb(
    out: NDArray[np.uint8],
    at: NDArray[np.int64],
    values: NDArray[np.int64],
    lens: NDArray[np.int64],
) -> None:
    for i in range(3):
        has = lens > i
        more = (lens > i + 1).astype(np.int64) << 7
        out[at[has] + i] = ((values[has] >> (7 * i)) & 0x7F) | more[has]


def _read_uleb(
    deltas: NDArray[np.uint8], start: NDArray[np.int64], end: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The ULEB128 length at each `start` (below `end`), and where each one ends."""
    value = np.zeros(len(start), dtype=np.int64)
    count = np.zeros(len(start), dtype=np.int64)
    pending = np.ones(len(start), dtype=np.bool_)
    for i in range(xbzrle.MAX_ULEB_BYTES):
        at = start + i
        truncated = pending & (at >= end)
        if truncated.any():
            raise _uleb_error(start, truncated)
        byte = deltas[np.where(pending, at, 0)].astype(np.int64)
        value |= np.where(pending, (byte & 0x7F) << (7 * i), 0)
        count += pending
        pending &= byte >= _ULEB_ONE_BYTE
        if not pending.any():
            return value, start + count
    raise _uleb_error(start, pending)


def _uleb_error(start: NDArray[np.int64], wrong: NDArray[np.bool_]) -> LocalProtocolError:
    first = int(np.flatnonzero(wrong)[0])
    msg = (
        f"XBZRLE length at delta offset {int(start[first])} is truncated or longer than "
        f"{xbzrle.MAX_ULEB_BYTES} bytes"
    )
    return bad(msg)


def _check_runs(
    offset: NDArray[np.int64],
    nzrun: NDArray[np.int64],
    at: NDArray[np.int64],
    end: NDArray[np.int64],
    page_size: int,
) -> None:
    wrong = (nzrun == 0) | (offset + nzrun > page_size) | (at + nzrun > end)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        msg = (
            f"XBZRLE run of {int(nzrun[i])} bytes at page offset {int(offset[i])} does not fit "
            f"the {page_size}-byte page or the delta"
        )
        raise bad(msg)


def _copy_runs(
    flat: NDArray[np.uint8],
    target: NDArray[np.int64],
    deltas: NDArray[np.uint8],
    source: NDArray[np.int64],
    nzrun: NDArray[np.int64],
) -> None:
    flat[spread_runs(target, nzrun)] = deltas[spread_runs(source, nzrun)]
