"""Atheris harness for the receivers (the invariant of h11's fuzz/afl-server.py).

Whatever bytes arrive, a ``DestConnection`` (and a ``SourceConnection`` reading a return path)
reports events or raises ``RemoteProtocolError``, and nothing else; it holds no more than its
limits. Each input is fed whole, byte by byte, and through ``get_buffers``/``buffers_filled``.
The first input byte picks the target: main stream (file mode / return-path mode), return path,
a postcopy return path (page requests, the source past POSTCOPY_RUN), or a multifd channel
(joined to the multifd vector's configuration on its CHANNEL handshake, as the router does),
or a TLS connection (whose frames may come without checksums, so mutations reach the decoders),
or a multifd channel that leaves its compressed frames to be decoded by its caller
(`defer_decode`, as the daemons' runner does on more than 2 cores) into a real page sink.

    .venv/bin/python tests/fuzz/fuzz_dest.py -max_total_time=600 tests/fuzz/corpus

Seeds: ``tests/fuzz/corpus`` is filled from ``tests/vectors/*.bin`` on start (one byte of
target selector prepended).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import protocol
    from protocol import (
        ChannelAnnounced,
        ChannelRole,
        DestConnection,
        Limits,
        LocalProtocolError,
        PagesToDecode,
        RemoteProtocolError,
        SourceConnection,
    )

HERE = Path(__file__).resolve().parent
VECTORS = HERE.parent / "vectors"
LIMITS = Limits(max_buffered_bytes=1 << 16, max_data_bytes=1 << 18, max_meta_bytes=1 << 16)
MAX_EVENTS = 100_000
BYTEWISE_MAX = 2048


def _source() -> SourceConnection:
    """A source that has sent the return-path vector's main stream (so replies are legal)."""
    from helpers.pair import replay_main, sent_bytes  # noqa: PLC0415

    source = SourceConnection(limits=LIMITS, timeouts=None, now=0.0)
    replay_main(_MAIN_EVENTS, source)
    sent_bytes(source)
    return source


def _postcopy_source() -> SourceConnection:
    """A source that has sent the postcopy vector up to POSTCOPY_RUN (REQ_PAGES is legal)."""
    from helpers.pair import replay_main, sent_bytes  # noqa: PLC0415

    source = SourceConnection(limits=LIMITS, timeouts=None, now=0.0)
    replay_main(_POSTCOPY_EVENTS, source)
    sent_bytes(source)
    return source


def _recovering_source() -> SourceConnection:
    """A source that opened a recover channel (RECV_BITMAP is legal)."""
    from helpers.pair import sent_bytes  # noqa: PLC0415
    from vectors.generate import PAGE_SIZE, RAM_PAGES  # noqa: PLC0415

    source = SourceConnection(limits=LIMITS, timeouts=None, now=0.0)
    source.open_recovery(_recover_config(RAM_PAGES, PAGE_SIZE), 1)
    sent_bytes(source)
    return source


def _recover_config(ram_pages: int, page_size: int) -> protocol.MigrationConfiguration:
    from helpers.pair import make_config  # noqa: PLC0415

    return make_config(ram_pages=ram_pages, page_size=page_size)


def _receiver(selector: int) -> SourceConnection | DestConnection:
    target = selector % 8
    if target == 7:  # compressed frames decoded by the caller (`_take`), into `_Ram`
        deferring = DestConnection(limits=LIMITS, timeouts=None, now=0.0)
        deferring.defer_decode = True
        return deferring
    if target == 6:  # a TLS connection: frames may drop their checksums (CHANNEL checksum none)
        return DestConnection(limits=LIMITS, timeouts=None, now=0.0, authenticated=True)
    if target == 2:
        return _source()
    if target == 4:
        return _postcopy_source()
    if target == 5:
        return _recovering_source()
    return DestConnection(return_path=target != 0, limits=LIMITS, timeouts=None, now=0.0)


def _ram() -> protocol.PageSink:
    """The vectors' RAM as a page sink (the deferring target places pages for real)."""
    from helpers.pair import BytesRam  # noqa: PLC0415
    from vectors.generate import PAGE_SIZE, RAM_PAGES  # noqa: PLC0415

    return BytesRam(RAM_PAGES, PAGE_SIZE)


def _next(conn: SourceConnection | DestConnection) -> object:
    """The next event; a frame left to its caller is decoded and handed back, as the runner does."""
    event = conn.next_event()
    if isinstance(event, PagesToDecode) and isinstance(conn, DestConnection):
        try:
            raw: bytes | LocalProtocolError = event.job.run()
        except LocalProtocolError as exc:
            raw = exc
        return conn.pages_decoded(event, raw)
    return event


def _take(conn: SourceConnection | DestConnection) -> None:
    for _ in range(MAX_EVENTS):
        event = _next(conn)
        if event is None:
            return
        if isinstance(event, ChannelAnnounced) and event.role in {
            ChannelRole.MULTIFD,
            ChannelRole.PREEMPT,
        }:
            _join(conn)
        if isinstance(event, ChannelAnnounced) and event.role is ChannelRole.RECOVER:
            _resume(conn)
    raise AssertionError("endless events")


def _resume(conn: SourceConnection | DestConnection) -> None:
    """Resume a recover channel as the router would (the recover vector's migration)."""
    from vectors.generate import PAGE_SIZE, RAM_PAGES  # noqa: PLC0415

    if isinstance(conn, DestConnection):
        with contextlib.suppress(LocalProtocolError):
            conn.resume(_recover_config(RAM_PAGES, PAGE_SIZE), None, 1)


def _join(conn: SourceConnection | DestConnection) -> None:
    """Join a multifd channel as the router would (it routes only a matching migration id)."""
    from vectors.generate import multifd_config  # noqa: PLC0415

    if isinstance(conn, DestConnection):
        with contextlib.suppress(LocalProtocolError):
            conn.join(multifd_config(), _ram() if conn.defer_decode else None)


def _whole(conn: SourceConnection | DestConnection, data: bytes) -> None:
    conn.receive_data(data, 0.0)
    _take(conn)


def _bytewise(conn: SourceConnection | DestConnection, data: bytes) -> None:
    """Byte by byte for small inputs; in pieces of 1..97 bytes beyond (keeps executions fast)."""
    step, i = 1, 0
    while i < len(data):
        conn.receive_data(data[i : i + step], 0.0)
        _take(conn)
        i += step
        if len(data) > BYTEWISE_MAX:
            step = step * 7 % 97 + 1


def _buffers(conn: SourceConnection | DestConnection, data: bytes) -> None:
    pos, step = 0, 7
    while pos < len(data):
        buffers = conn.get_buffers()
        if not buffers:
            if _next(conn) is None:
                return
            continue
        buf = buffers[0]
        take = min(len(buf), len(data) - pos, step)
        buf[:take] = data[pos : pos + take]
        conn.buffers_filled(take, 0.0)
        pos += take
        step = step * 3 % 4093 + 1
    _take(conn)


def test_one_input(data: bytes) -> None:
    """The fuzz target: only RemoteProtocolError may escape, within the limits."""
    if not data:
        return
    selector, payload = data[0], data[1:]
    for feed in (_whole, _bytewise, _buffers):
        conn = _receiver(selector)
        try:
            feed(conn, payload)
            conn.receive_eof(0.0)
            _take(conn)
        except RemoteProtocolError:
            pass
        if len(conn._reader._pending) > LIMITS.max_buffered_bytes:
            raise AssertionError("pending buffer beyond max_buffered_bytes")


def _seed_corpus(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = {
        "file_v2.bin": 0,
        "file_v1.bin": 0,
        "return_path.main.bin": 1,
        "resolve.main.bin": 1,
        "return_path.return.bin": 2,
        "multifd.bin": 3,
        "preempt.bin": 3,
        "postcopy.main.bin": 1,
        "postcopy.return.bin": 4,
        "postcopy_recover.main.bin": 1,
        "postcopy_recover.return.bin": 5,
        "precopy_resume.main.bin": 1,
        "precopy_resume.return.bin": 5,
        "multifd_tls.bin": 6,
    }
    for name, selector in seeds.items():
        (corpus / f"seed-{name}").write_bytes(bytes([selector]) + (VECTORS / name).read_bytes())
    deferred = bytes([7]) + (VECTORS / "multifd.bin").read_bytes()
    (corpus / "seed-deferred-multifd.bin").write_bytes(deferred)


def main() -> None:
    """Seed the corpus directories given on the command line, then fuzz."""
    global _MAIN_EVENTS, _POSTCOPY_EVENTS  # noqa: PLW0603 - built once, before fuzzing starts
    sys.path.insert(0, str(HERE.parent))
    from helpers.pair import decode_main  # noqa: PLC0415

    _MAIN_EVENTS = decode_main((VECTORS / "return_path.main.bin").read_bytes(), return_path=True)
    postcopy = decode_main((VECTORS / "postcopy.main.bin").read_bytes(), return_path=True)
    run = next(i for i, e in enumerate(postcopy) if isinstance(e, protocol.PostcopyRunning))
    _POSTCOPY_EVENTS = postcopy[: run + 1]
    for arg in sys.argv[1:]:
        if not arg.startswith("-"):
            _seed_corpus(Path(arg))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


_MAIN_EVENTS: list[protocol.Event] = []
_POSTCOPY_EVENTS: list[protocol.Event] = []

if __name__ == "__main__":
    main()
