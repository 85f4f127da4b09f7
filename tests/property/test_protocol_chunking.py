"""Any chunking of a valid stream yields the same events and the same guest RAM.

Bytes are delivered whole, split at arbitrary points (``receive_data``), byte by byte, and
through ``get_buffers``/``buffers_filled`` with arbitrary fill sizes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.pair import (
    ConnectionPair,
    decode_main,
    normalize,
    pattern_ram,
    perform,
    replay_main,
    scripts,
    sent_bytes,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import DestConnection, SourceConnection

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def decode(
    stream: bytes,
    *,
    return_path: bool,
    split: list[int] | None = None,
    fills: list[int] | None = None,
):
    pair = ConnectionPair(return_path=return_path, fill_sizes=fills)
    events = []
    if split is None:
        events += pair.deliver(pair.dest, stream)
    else:
        cuts = sorted({c % (len(stream) + 1) for c in split})
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            events += pair.deliver(pair.dest, stream[start:end])
    pair.dest.receive_eof(0.0)
    while (event := pair.dest.next_event()) is not None:
        events.append(event)
    return normalize(events), pair.dest_ram


def recorded(script) -> bytes:
    pair = ConnectionPair(version=script.version, return_path=script.return_path)
    perform(pair, script, pattern_ram(script.ram_pages, script.page_size))
    return bytes(pair.main_stream)


@settings(max_examples=40)
@given(scripts(max_pages=24), st.lists(st.integers(0, 1 << 20), max_size=30))
def test_any_split_gives_the_same_events(script, cuts):
    stream = recorded(script)
    whole = decode(stream, return_path=script.return_path)
    assert whole == decode(stream, return_path=script.return_path, split=cuts)


@settings(max_examples=40)
@given(scripts(max_pages=24), st.lists(st.integers(1, 5000), min_size=1, max_size=10))
def test_any_fill_sizes_give_the_same_events(script, fills):
    stream = recorded(script)
    whole = decode(stream, return_path=script.return_path)
    assert whole == decode(stream, return_path=script.return_path, fills=fills)


@pytest.mark.parametrize("name", ["file_v2.bin", "file_v1.bin", "return_path.main.bin"])
def test_byte_by_byte(name):
    stream = (VECTORS / name).read_bytes()
    return_path = name.startswith("return")
    whole = decode(stream, return_path=return_path)
    assert whole == decode(stream, return_path=return_path, split=list(range(len(stream))))
    assert whole == decode(stream, return_path=return_path, fills=[1])


def test_return_path_byte_by_byte():
    """The source side too: the return vector fed whole and byte by byte."""
    main = (VECTORS / "return_path.main.bin").read_bytes()
    back = (VECTORS / "return_path.return.bin").read_bytes()
    results = []
    for step in (len(back), 1):
        source = SourceConnection(timeouts=None, now=0.0)
        replay_main(decode_main(main, return_path=True), source)
        sent_bytes(source)
        events = []
        for start in range(0, len(back), step):
            source.receive_data(back[start : start + step], 0.0)
            while (event := source.next_event()) is not None:
                events.append(event)
        results.append(normalize(events))
    assert results[0] == results[1]
    assert DestConnection  # imported for symmetry with the destination tests
