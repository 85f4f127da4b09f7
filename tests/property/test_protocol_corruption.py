"""A corrupted byte anywhere is reported at the right frame; truncation at every offset is
TRUNCATED inside a frame, or a close (clean only at a legal end) between frames."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.pair import decode_main, frame_offsets, replay_main, sent_bytes

from protocol import (
    SUPPORTED_VERSIONS,
    ConnectionClosed,
    DestConnection,
    ErrorCode,
    RemoteProtocolError,
    SourceConnection,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
STREAM = (VECTORS / "file_v2.bin").read_bytes()
SPANS = frame_offsets(decode_main(STREAM, return_path=False))


def frame_at(offset: int) -> int | None:
    """Index of the frame holding ``offset`` (None: the stream header)."""
    for index, (start, end) in enumerate(SPANS):
        if start <= offset < end:
            return index
    return None


def run(stream: bytes, *, eof: bool = True) -> list:
    dest = DestConnection(return_path=False, timeouts=None, now=0.0)
    dest.receive_data(stream, 0.0)
    if eof:
        dest.receive_eof(0.0)
    events = []
    while (event := dest.next_event()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x80])
def test_corrupted_byte_is_reported_at_its_frame(mask):
    for offset in range(len(STREAM)):
        damaged = bytearray(STREAM)
        damaged[offset] ^= mask
        if offset == 5 and damaged[5] in SUPPORTED_VERSIONS:
            # version 2 -> 1: frame 0 then fails its CRC (below); 2 -> 3: a file stream of
            # version 3 is the same stream (no CHANNEL handshake in a file), see below.
            continue
        with pytest.raises(RemoteProtocolError) as info:
            run(bytes(damaged))
        expected = frame_at(offset)
        error = info.value
        if expected is None:
            assert error.frame is None, offset
            assert error.code in {
                ErrorCode.BAD_MAGIC,
                ErrorCode.UNSUPPORTED_VERSION,
                ErrorCode.PROTOCOL_ERROR,
            }
        else:
            assert error.frame is not None, (offset, error)
            assert (expected, SPANS[expected][0]) == (error.frame.index, error.frame.offset), (
                offset,
                str(error),
            )


def test_version_downgrade_fails_the_first_checksum():
    damaged = bytearray(STREAM)
    damaged[5] = 1
    with pytest.raises(RemoteProtocolError) as info:
        run(bytes(damaged))
    assert (ErrorCode.CHECKSUM_MISMATCH, 0) == (info.value.code, info.value.frame.index)


def test_a_file_stream_reads_the_same_as_version_3():
    upgraded = bytearray(STREAM)
    upgraded[5] = 3

    assert run(STREAM)[1:] == run(bytes(upgraded))[1:]


def test_truncation_at_every_offset():
    boundaries = {8} | {end for _start, end in SPANS}
    legal_ends = {SPANS[-2][1], SPANS[-1][1]}  # after EOF and after VMDESCRIPTION
    for cut in range(len(STREAM) + 1):
        if cut == 0 or cut in boundaries:
            events = run(STREAM[:cut])
            assert ConnectionClosed(clean=cut in legal_ends) == events[-1], cut
            continue
        with pytest.raises(RemoteProtocolError) as info:
            run(STREAM[:cut])
        assert ErrorCode.TRUNCATED == info.value.code
        expected = frame_at(cut)
        got = None if info.value.frame is None else info.value.frame.index
        assert expected == got, cut


def take_all(conn: SourceConnection, *, catch: bool = False) -> list | RemoteProtocolError:
    """Every event; with ``catch``, the stream's error instead of raising it."""
    events = []
    try:
        while (event := conn.next_event()) is not None:
            events.append(event)
    except RemoteProtocolError as exc:
        if not catch:
            raise
        return exc
    return events


def _source_expecting_replies() -> SourceConnection:
    source = SourceConnection(timeouts=None, now=0.0)
    replay_main(
        decode_main((VECTORS / "return_path.main.bin").read_bytes(), return_path=True), source
    )
    sent_bytes(source)
    return source


def test_return_path_corruption_and_truncation():
    back = (VECTORS / "return_path.return.bin").read_bytes()
    source = _source_expecting_replies()
    source.receive_data(back, 0.0)
    spans = []
    while (event := source.next_event()) is not None:
        if getattr(event, "frame", None) is not None:
            spans.append((event.frame.offset, event.frame.offset + 32 + event.frame.meta_len))
    for offset in range(len(back)):
        damaged = bytearray(back)
        damaged[offset] ^= 0xFF
        source = _source_expecting_replies()
        source.receive_data(bytes(damaged), 0.0)
        source.receive_eof(0.0)
        with pytest.raises(RemoteProtocolError) as info:
            take_all(source)
        index = next((i for i, (s, e) in enumerate(spans) if s <= offset < e), None)
        assert index == (None if info.value.frame is None else info.value.frame.index), offset
    for cut in range(len(back)):
        source = _source_expecting_replies()
        source.receive_data(back[:cut], 0.0)
        source.receive_eof(0.0)
        outcome = take_all(source, catch=True)
        if isinstance(outcome, RemoteProtocolError):
            assert ErrorCode.TRUNCATED == outcome.code, cut
        else:
            assert ConnectionClosed(clean=False) == outcome[-1], cut  # no RESUMED yet: in doubt
