"""XBZRLE: a re-sent page as the delta from the copy the destination already has (QEMU's format).

QEMU's ``docs/devel/migration/xbzrle.rst``: the delta is a sequence of ``zrun nzrun`` pairs, each
a ULEB128 length; a zrun skips unchanged bytes, an nzrun is followed by that many new bytes; a
trailing unchanged run is left out. Encoding finds the changed runs with numpy (no per-byte
Python), and gives up (None) when the delta would not be smaller than the page: the page then
goes whole. Decoding checks every length against the page and the delta before it copies, so a
hostile delta can only fail with a clear error. Pure computation: no I/O, no clock.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from protocol.meta import bad

MAX_ULEB_BYTES: Final = 3
"""Lengths are at most a page (64 KiB at most): three ULEB128 bytes."""


def encode(old: memoryview | bytes, new: memoryview | bytes) -> bytes | None:
    """The delta turning page `old` into page `new`; b"" if equal; None if not smaller."""
    before = np.frombuffer(old, dtype=np.uint8)
    after = np.frombuffer(new, dtype=np.uint8)
    changed = before != after
    if not changed.any():
        return b""
    edges = np.flatnonzero(changed[1:] != changed[:-1]) + 1
    bounds = np.concatenate(([0], edges, [len(changed)])).tolist()
    starts_changed = bool(changed[0])
    out = bytearray()
    limit = len(after) - 1
    segment = 0 if starts_changed else 1  # index of the first changed segment
    zrun_start = 0
    while segment < len(bounds) - 1:
        start, end = bounds[segment], bounds[segment + 1]
        out += _uleb(start - zrun_start) + _uleb(end - start)
        out += after[start:end].tobytes()
        if len(out) > limit:
            return None
        zrun_start = end
        segment += 2
    return bytes(out)


def decode_into(page: memoryview, delta: memoryview | bytes) -> None:
    """Apply `delta` to `page` in place.

    Raises:
        LocalProtocolError: BAD_METADATA naming what does not fit (a length beyond the page or
            the delta, an empty changed run, a truncated length).
    """
    data = memoryview(delta)
    size = len(page)
    pos = offset = 0
    while pos < len(data):
        zrun, pos = _read_uleb(data, pos)
        nzrun, pos = _read_uleb(data, pos)
        offset += zrun
        if nzrun == 0 or offset + nzrun > size or pos + nzrun > len(data):
            msg = (
                f"XBZRLE run of {nzrun} bytes at page offset {offset} does not fit the "
                f"{size}-byte page or the {len(data)}-byte delta"
            )
            raise bad(msg)
        page[offset : offset + nzrun] = data[pos : pos + nzrun]
        offset += nzrun
        pos += nzrun


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uleb(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(MAX_ULEB_BYTES):
        if pos + i >= len(data):
            break
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos + i + 1
    msg = f"XBZRLE length at delta offset {pos} is truncated or longer than {MAX_ULEB_BYTES} bytes"
    raise bad(msg)
