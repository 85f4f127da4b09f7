"""Any chunking of a valid stream yields the same events and the same guest RAM.

Bytes are delivered whole, split at arbitrary points (``receive_data``), byte by byte, and
through ``get_buffers``/``buffers_filled`` with arbitrary fill sizes; the main stream to a
destination, the return path to a source. Whole delivery is itself checked against what was
sent: the destination's RAM against the source's pages the stream carried, the events against
the frames the other side queued, and the stream must end cleanly.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from helpers.pair import (
    ConnectionPair,
    N,
    decode_main,
    normalize,
    pattern_ram,
    perform,
    received_ram,
    replay_main,
    scripts,
    sent_bytes,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    ConfigurationReceived,
    ConnectionClosed,
    DestinationResumed,
    LoadCompleted,
    PongReceived,
    ReturnPathAcked,
    ReturnStreamStarted,
    SourceConnection,
)
from vmsim.savevm import ram_loader

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
# tests/vectors: 16 pages of 1 KiB, pattern_ram contents; NORMAL runs (0, 2), (5, 3), (8, 1)
VECTOR_PAGES, VECTOR_PAGE_SIZE = 16, 1024
VECTOR_NORMAL_PAGES = (0, 1, 5, 6, 7, 8)


def deliver_all(pair: ConnectionPair, receiver, stream: bytes, split: list[int] | None):
    """Feed ``stream`` to ``receiver`` (whole or cut at ``split``), then end of file."""
    events = []
    if split is None:
        events += pair.deliver(receiver, stream)
    else:
        cuts = sorted({c % (len(stream) + 1) for c in split})
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            events += pair.deliver(receiver, stream[start:end])
    receiver.receive_eof(0.0)
    while (event := receiver.next_event()) is not None:
        events.append(event)
    return events


def decode(
    stream: bytes,
    *,
    return_path: bool,
    split: list[int] | None = None,
    fills: list[int] | None = None,
    scatter: bool = False,
):
    """A destination's normalized events for ``stream`` and the guest RAM it loaded.

    Without ``scatter`` every RAM frame lands straight in the pages; with it, every frame takes
    the RAM loader's other path (one buffer, then a vectorised scatter to the pages), which
    only frames of many small extents take in production and these small streams rarely have.
    vmsim's RAM has 4 KiB pages: streams of other page sizes have no page sink, and their RAM
    is rebuilt from the data the events carry.
    """
    pair = ConnectionPair(return_path=return_path, fill_sizes=fills)
    with (
        mock.patch.object(ram_loader, "SCATTER_MIN_EXTENTS", 1 if scatter else 1 << 30),
        mock.patch.object(ram_loader, "SCATTER_MAX_MEAN_BYTES", 1 << 30),
    ):
        events = deliver_all(pair, pair.dest, stream, split)
    assert ConnectionClosed(clean=True) == events[-1]
    if pair.dest_ram is not None:
        return normalize(events), bytes(pair.dest_ram)
    config = next(e.config for e in events if isinstance(e, ConfigurationReceived))
    ram = received_ram(events, ram_size=config.ram_size, page_size=config.page_size)
    return normalize(events), bytes(ram)


def decode_return(
    main: bytes,
    back: bytes,
    *,
    version: int,
    split: list[int] | None = None,
    fills: list[int] | None = None,
):
    """A source's normalized events for the return path ``back`` of the main stream ``main``."""
    source = SourceConnection(version=version, timeouts=None, now=0.0)
    replay_main(decode_main(main, return_path=True), source)
    assert main == sent_bytes(source)
    events = deliver_all(ConnectionPair(fill_sizes=fills), source, back, split)
    return normalize(events)


def recorded(script) -> tuple[bytes, bytes]:
    """The main stream and the return path of ``script`` performed by a connection pair."""
    pair = ConnectionPair(version=script.version, return_path=script.return_path)
    perform(pair, script, pattern_ram(script.ram_pages, script.page_size))
    return bytes(pair.main_stream), bytes(pair.return_stream)


def expected_ram(script) -> bytearray:
    """The destination's RAM after the script: NORMAL runs copied, ZERO runs zeroed, in order."""
    source = pattern_ram(script.ram_pages, script.page_size)
    ram = bytearray(len(source))
    size = script.page_size
    for name, args in script.steps:
        if name != "ram":
            continue
        _, runs, _ = args
        for first, count, kind in runs:
            start, end = first * size, (first + count) * size
            ram[start:end] = source[start:end] if kind == N else bytes(end - start)
    return ram


def expected_return_events(script) -> list[tuple[object, ...]]:
    """What the source must see of the replies `perform` makes the destination send."""
    pongs = [args[0] for name, args in script.steps if name == "ping"]
    events = [
        ReturnStreamStarted(version=script.version),
        ReturnPathAcked(version=script.version),
        *(PongReceived(value=value) for value in pongs),
    ]
    if script.finish == "handover":
        events += [
            LoadCompleted(digest="d1", normal_pages=1, zero_pages=2, devices=3),
            DestinationResumed(runstate="running"),
        ]
    return [*normalize(events), ("ConnectionClosed", ConnectionClosed(clean=True))]


@settings(max_examples=40)
@given(scripts(max_pages=24), st.lists(st.integers(0, 1 << 20), max_size=30))
def test_any_split_gives_the_same_events(script, cuts):
    stream, _ = recorded(script)
    whole = decode(stream, return_path=script.return_path)
    assert expected_ram(script) == whole[1]
    assert whole == decode(stream, return_path=script.return_path, split=cuts)
    assert whole == decode(stream, return_path=script.return_path, split=cuts, scatter=True)


@settings(max_examples=40)
@given(scripts(max_pages=24), st.lists(st.integers(1, 5000), min_size=1, max_size=10))
def test_any_fill_sizes_give_the_same_events(script, fills):
    stream, _ = recorded(script)
    whole = decode(stream, return_path=script.return_path)
    assert expected_ram(script) == whole[1]
    assert whole == decode(stream, return_path=script.return_path, fills=fills)
    assert whole == decode(stream, return_path=script.return_path, fills=fills, scatter=True)


@pytest.mark.parametrize(
    "name", ["file_v3.bin", "file_v2.bin", "file_v1.bin", "return_path.main.bin"]
)
def test_byte_by_byte(name):
    stream = (VECTORS / name).read_bytes()
    return_path = name.startswith("return")
    source_ram = pattern_ram(VECTOR_PAGES, VECTOR_PAGE_SIZE)
    loaded = bytearray(len(source_ram))
    for page in VECTOR_NORMAL_PAGES:
        start, end = page * VECTOR_PAGE_SIZE, (page + 1) * VECTOR_PAGE_SIZE
        loaded[start:end] = source_ram[start:end]

    whole = decode(stream, return_path=return_path)

    assert loaded == whole[1]
    assert whole == decode(stream, return_path=return_path, split=list(range(len(stream))))
    assert whole == decode(stream, return_path=return_path, fills=[1])
    assert whole == decode(stream, return_path=return_path, fills=[1], scatter=True)


@settings(max_examples=40)
@given(
    scripts(max_pages=12).filter(lambda script: script.return_path),
    st.lists(st.integers(0, 1 << 12), max_size=20),
    st.lists(st.integers(1, 300), min_size=1, max_size=6),
)
def test_return_path_any_split_gives_the_same_events(script, cuts, fills):
    main, back = recorded(script)
    whole = decode_return(main, back, version=script.version)

    assert expected_return_events(script) == whole
    assert whole == decode_return(main, back, version=script.version, split=cuts)
    assert whole == decode_return(main, back, version=script.version, fills=fills)


def test_return_path_byte_by_byte():
    """The source side too: the return vector fed whole, byte by byte, one-byte fills."""
    main = (VECTORS / "return_path.main.bin").read_bytes()
    back = (VECTORS / "return_path.return.bin").read_bytes()
    version = decode_main(main, return_path=True)[0].version

    whole = decode_return(main, back, version=version)

    assert [
        ("ReturnStreamStarted", ReturnStreamStarted(version=version)),
        ("ReturnPathAcked", ReturnPathAcked(version=version)),
        ("PongReceived", PongReceived(value=1)),
        ("LoadCompleted", LoadCompleted(digest="00ff", normal_pages=6, zero_pages=3, devices=2)),
        ("DestinationResumed", DestinationResumed(runstate="running")),
        ("ConnectionClosed", ConnectionClosed(clean=True)),
    ] == whole
    assert whole == decode_return(main, back, version=version, split=list(range(len(back))))
    assert whole == decode_return(main, back, version=version, fills=[1])
