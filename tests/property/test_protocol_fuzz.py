"""Fuzzing in the normal test run (bounded time): whatever bytes arrive, in whatever chunks,
a receiver only ever raises RemoteProtocolError, holds at most its limits and terminates.

The same invariant runs longer under atheris: ``tests/fuzz/fuzz_dest.py``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.pair import (
    BytesRam,
    decode_main,
    make_batch,
    make_config,
    pattern_ram,
    replay_main,
    sent_bytes,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vectors.generate import ZLIB_PAGES_4_TO_7, ZSTD_PAGES_4_TO_7, multifd_config

from protocol import (
    ChannelAnnounced,
    ChannelRole,
    DestConnection,
    Limits,
    LocalProtocolError,
    PageKind,
    PagesToDecode,
    PostcopyRunning,
    RemoteProtocolError,
    SourceConnection,
)
from protocol.codec import Codec, Compressed

if TYPE_CHECKING:
    from collections.abc import Callable

    from protocol import PageSink

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
MAIN = [
    (VECTORS / n).read_bytes()
    for n in (
        "file_v2.bin",
        "file_v1.bin",
        "return_path.main.bin",
        "resolve.main.bin",
        "postcopy.main.bin",
    )
]
RETURN = (VECTORS / "return_path.return.bin").read_bytes()
LIMITS = Limits(max_buffered_bytes=64 * 1024, max_data_bytes=256 * 1024, max_meta_bytes=64 * 1024)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed(
    receiver: SourceConnection | DestConnection, data: bytes, cuts: list[int], *, buffers: bool
) -> None:
    """Deliver ``data`` in pieces, taking events; only RemoteProtocolError may escape."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    start = 0
    try:
        for end in points:
            piece = data[start:end]
            start = end
            if buffers:
                _fill_all(receiver, piece)
            else:
                receiver.receive_data(piece, 0.0)
                _take_all(receiver)
        receiver.receive_eof(0.0)
        _take_all(receiver)
    except RemoteProtocolError:
        pass
    assert len(receiver._reader._pending) <= LIMITS.max_buffered_bytes


def _take_all(receiver: SourceConnection | DestConnection) -> None:
    for _ in range(10_000):
        if receiver.next_event() is None:
            return
    raise AssertionError("endless events")


def _fill_all(receiver: SourceConnection | DestConnection, piece: bytes) -> None:
    pos = 0
    for _ in range(len(piece) + 100):
        if pos == len(piece):
            return
        buffers = receiver.get_buffers()
        if not buffers:
            if receiver.next_event() is None:
                return  # failed or ended: the error surfaces from next_event
            continue
        take = min(len(buffers[0]), len(piece) - pos)
        buffers[0][:take] = piece[pos : pos + take]
        receiver.buffers_filled(take, 0.0)
        pos += take
        _take_all(receiver)
    raise AssertionError("no progress")


def dest(return_path: bool, *, tls: bool = False) -> DestConnection:
    return DestConnection(
        return_path=return_path, limits=LIMITS, timeouts=None, now=0.0, authenticated=tls
    )


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "dup"]),
        st.integers(0, 1 << 16),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for op, where, blob in ops:
        i = where % (len(out) + 1)
        if op == "flip" and i < len(out):
            out[i] ^= blob[0] or 1
        elif op == "set":
            out[i : i + len(blob)] = blob
        elif op == "insert":
            out[i:i] = blob
        elif op == "delete":
            del out[i : i + blob[0]]
        elif op == "dup":
            out[i:i] = out[i : i + 64 * blob[0]]
    return bytes(out)


@FUZZ
@given(
    st.binary(max_size=2048),
    st.booleans(),
    st.lists(st.integers(0, 4096), max_size=8),
    st.booleans(),
)
def test_random_bytes(data, return_path, cuts, buffers):
    feed(dest(return_path), data, cuts, buffers=buffers)


@FUZZ
@given(
    st.binary(max_size=1024),
    st.sampled_from([b"LVMG\x00\x02\x00\x00", b"LVMG\x00\x01\x00\x00"]),
    st.booleans(),
)
def test_random_frames_after_a_valid_header(data, header, return_path):
    feed(dest(return_path), header + data, [], buffers=False)


@FUZZ
@given(
    st.sampled_from(range(len(MAIN))),
    mutations,
    st.lists(st.integers(0, 1 << 14), max_size=6),
    st.booleans(),
)
def test_mutated_vectors(which, ops, cuts, buffers):
    stream = mutate(MAIN[which], ops)
    feed(dest(return_path=which >= 2), stream, cuts, buffers=buffers)


_MAIN_EVENTS = decode_main(MAIN[2], return_path=True)


def _source() -> SourceConnection:
    source = SourceConnection(limits=LIMITS, timeouts=None, now=0.0)
    replay_main(_MAIN_EVENTS, source)
    sent_bytes(source)
    return source


@FUZZ
@given(mutations, st.lists(st.integers(0, 1 << 10), max_size=6), st.booleans())
def test_source_receiving_a_mutated_return_path(ops, cuts, buffers):
    feed(_source(), mutate(RETURN, ops), cuts, buffers=buffers)


POSTCOPY_RETURN = (VECTORS / "postcopy.return.bin").read_bytes()


def _postcopy_source() -> SourceConnection:
    """A source that sent the postcopy vector up to POSTCOPY_RUN (REQ_PAGES is legal)."""
    events = decode_main(MAIN[4], return_path=True)
    run = next(i for i, e in enumerate(events) if isinstance(e, PostcopyRunning))
    source = SourceConnection(limits=LIMITS, timeouts=None, now=0.0)
    replay_main(events[: run + 1], source)
    sent_bytes(source)
    return source


@FUZZ
@given(mutations, st.lists(st.integers(0, 1 << 10), max_size=6), st.booleans())
def test_postcopy_source_receiving_mutated_page_requests(ops, cuts, buffers):
    """REQ_PAGES ranges mutated (empty, past RAM, too many): only RemoteProtocolError."""
    feed(_postcopy_source(), mutate(POSTCOPY_RETURN, ops), cuts, buffers=buffers)


@FUZZ
@given(st.binary(max_size=512))
def test_source_receiving_random_bytes(data):
    feed(_source(), b"LVRP\x00\x02\x00\x00" + data, [], buffers=False)


PAGE_CHANNELS = [(VECTORS / name).read_bytes() for name in ("multifd.bin", "preempt.bin")]
TLS_CHANNEL = (VECTORS / "multifd_tls.bin").read_bytes()


def _joined_take_all(receiver: DestConnection, sink: Callable[[], PageSink] | None = None) -> None:
    """Take events; on a multifd CHANNEL, join the vector's configuration as the router does
    (into a new `sink` if given); decode what the connection leaves to its caller."""
    for _ in range(10_000):
        event = receiver.next_event()
        if event is None:
            return
        if isinstance(event, ChannelAnnounced) and event.role in _PAGE_ROLES:
            with contextlib.suppress(LocalProtocolError):  # a mutated id: the router refuses
                receiver.join(multifd_config(), sink() if sink else None)
        if isinstance(event, PagesToDecode):
            try:
                raw: bytes | LocalProtocolError = event.job.run()
            except LocalProtocolError as exc:
                raw = exc
            receiver.pages_decoded(event, raw)
    raise AssertionError("endless events")


_PAGE_ROLES = frozenset({ChannelRole.MULTIFD, ChannelRole.PREEMPT})


@FUZZ
@given(mutations, st.lists(st.integers(0, 1 << 12), max_size=6), st.sampled_from(PAGE_CHANNELS))
def test_mutated_multifd_channel(ops, cuts, stream):
    """A multifd channel's PAGES (raw, zlib, zstd) and MULTIFD_SYNC, or a preempt channel's
    PAGES, mutated: only RemoteProtocolError escapes."""
    feed_channel(mutate(stream, ops), cuts, _joined_take_all)


@FUZZ
@given(mutations, st.lists(st.integers(0, 1 << 12), max_size=6))
def test_mutated_tls_channel_without_checksums(ops, cuts):
    """A TLS channel's frames carry no checksum: mutations reach every decoder behind it, and
    still only RemoteProtocolError escapes (TLS would have refused them; this is the depth)."""
    feed_channel(mutate(TLS_CHANNEL, ops), cuts, _joined_take_all, tls=True)


def _tls_compressed_channel() -> bytes:
    """A TLS multifd channel (no checksums) with zlib and zstd frames: mutations reach them."""
    ram = pattern_ram(16, 1024)
    source = SourceConnection(timeouts=None, now=0.0, authenticated=True)
    source.open_multifd(multifd_config(), 0)
    source.send_multifd_sync(1)
    pages = make_batch(ram, [(4, 4, PageKind.NORMAL)], 1024)
    source.send_pages(pages, Compressed(Codec.ZLIB, ZLIB_PAGES_4_TO_7))
    source.send_pages(pages, Compressed(Codec.ZSTD, ZSTD_PAGES_4_TO_7))
    source.send_eof()
    return sent_bytes(source)


TLS_COMPRESSED = _tls_compressed_channel()


def _deferred_take_all(receiver: DestConnection) -> None:
    """As the daemons' runner does with `defer_decode`: decode each PagesToDecode, hand it back."""
    _joined_take_all(receiver, lambda: BytesRam(16))


@FUZZ
@given(mutations, st.lists(st.integers(0, 1 << 12), max_size=6))
def test_mutated_compressed_frames_decoded_by_the_caller(ops, cuts):
    """Compressed frames decoded outside the connection (`defer_decode`), mutated behind TLS:
    only RemoteProtocolError escapes, from `next_event` or from `pages_decoded`."""
    feed_channel(mutate(TLS_COMPRESSED, ops), cuts, _deferred_take_all, tls=True, defer=True)


def feed_channel(
    data: bytes,
    cuts: list[int],
    take_all: Callable[[DestConnection], None],
    *,
    tls: bool = False,
    defer: bool = False,
) -> None:
    """Deliver a channel's bytes in pieces to a destination, taking events the router's way."""
    receiver = dest(return_path=True, tls=tls)
    receiver.defer_decode = defer
    points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    start = 0
    try:
        for end in points:
            receiver.receive_data(data[start:end], 0.0)
            start = end
            take_all(receiver)
        receiver.receive_eof(0.0)
        take_all(receiver)
    except RemoteProtocolError:
        pass
    assert len(receiver._reader._pending) <= LIMITS.max_buffered_bytes


RECOVER_MAINS = [
    (VECTORS / f"{n}.main.bin").read_bytes() for n in ("postcopy_recover", "precopy_resume")
]
RECOVER_RETURNS = [
    (VECTORS / f"{n}.return.bin").read_bytes() for n in ("postcopy_recover", "precopy_resume")
]
RECOVER_CONFIG = make_config(ram_pages=16, page_size=1024)


def _recovering_source() -> SourceConnection:
    source = SourceConnection(limits=LIMITS, timeouts=None, now=0.0)
    source.open_recovery(RECOVER_CONFIG, 1)
    sent_bytes(source)
    return source


@FUZZ
@given(
    mutations,
    st.lists(st.integers(0, 1 << 8), max_size=6),
    st.booleans(),
    st.sampled_from(RECOVER_RETURNS),
)
def test_recovering_source_receiving_a_mutated_bitmap(ops, cuts, buffers, reply):
    """RECV_BITMAP or RESUME_POINT mutated (lengths, offsets, past RAM, counts): only
    RemoteProtocolError escapes."""
    feed(_recovering_source(), mutate(reply, ops), cuts, buffers=buffers)


def _resumed_take_all(receiver: DestConnection) -> None:
    """Take events; on a recover CHANNEL, resume the vector's migration as the router does."""
    for _ in range(10_000):
        event = receiver.next_event()
        if event is None:
            return
        if isinstance(event, ChannelAnnounced) and event.role is ChannelRole.RECOVER:
            with contextlib.suppress(LocalProtocolError):  # a mutated id: the router refuses
                receiver.resume(RECOVER_CONFIG, None, 1)
    raise AssertionError("endless events")


@FUZZ
@given(mutations, st.lists(st.integers(0, 1 << 12), max_size=6), st.sampled_from(RECOVER_MAINS))
def test_mutated_recover_channel(ops, cuts, stream):
    """A recover channel's stream (postcopy or precopy) mutated: only RemoteProtocolError
    escapes."""
    feed_channel(mutate(stream, ops), cuts, _resumed_take_all)
