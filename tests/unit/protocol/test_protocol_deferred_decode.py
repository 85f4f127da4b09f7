"""A destination that decodes compressed PAGES elsewhere (`defer_decode`, the daemons' multifd
channels): the frame comes out as PagesToDecode, the connection reads nothing further until
`pages_decoded`, and then it is as if the connection had decoded the pages itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers.pair import BytesRam, pattern_ram
from vectors.generate import multifd_config

from protocol import (
    ChannelAnnounced,
    ConnectionClosed,
    DestConnection,
    LocalProtocolError,
    MultifdPagesReceived,
    PagesToDecode,
    RemoteProtocolError,
)

VECTOR = (Path(__file__).resolve().parents[2] / "vectors" / "multifd.bin").read_bytes()
PAGE = 1024


def receiving(ram: BytesRam) -> DestConnection:
    dest = DestConnection(timeouts=None, now=0.0)
    dest.defer_decode = True
    dest.receive_data(VECTOR, 0.0)
    dest.receive_eof(0.0)
    return dest


def test_deferred_frames_wait_for_their_pages_and_load_as_the_connection_would():
    ram = BytesRam(16)
    dest = receiving(ram)
    events: list[object] = []
    deferred = 0
    while (event := dest.next_event()) is not None:
        if isinstance(event, ChannelAnnounced):
            dest.join(multifd_config(), ram)
        if isinstance(event, PagesToDecode):
            deferred += 1
            loaded = ram.loaded
            assert dest.next_event() is None  # held: the next frame is not read
            assert [] == list(dest.get_buffers())
            event = dest.pages_decoded(event, event.job.run())
            assert ram.loaded == loaded + 1
            assert event.frame is not None
        events.append(event)

    assert 2 == deferred  # the zlib and the zstd frame; the raw one loads at once
    pages = [e for e in events if isinstance(e, MultifdPagesReceived)]
    assert [(2, 1), (4, 0), (4, 0)] == [(e.normal_pages, e.zero_pages) for e in pages]
    assert ConnectionClosed(clean=True) == events[-1]
    expected = pattern_ram(16, PAGE)
    assert expected[: 2 * PAGE] == ram.mem[: 2 * PAGE]
    assert expected[4 * PAGE : 8 * PAGE] == ram.mem[4 * PAGE : 8 * PAGE]


def first_deferred(dest: DestConnection, ram: BytesRam) -> PagesToDecode:
    while (event := dest.next_event()) is not None:
        if isinstance(event, ChannelAnnounced):
            dest.join(multifd_config(), ram)
        if isinstance(event, PagesToDecode):
            return event
    raise AssertionError("no PagesToDecode")


def test_pages_that_did_not_decode_fail_the_stream_with_the_decoders_error():
    ram = BytesRam(16)
    dest = receiving(ram)
    event = first_deferred(dest, ram)
    loaded = ram.loaded

    with pytest.raises(RemoteProtocolError, match="zlib page data is broken"):
        dest.pages_decoded(event, LocalProtocolError("zlib page data is broken"))
    with pytest.raises(RemoteProtocolError, match="broken"):
        dest.next_event()  # the stream stays failed
    assert loaded == ram.loaded  # the frame never reached its sink


def test_pages_decoded_for_another_frame_is_a_caller_bug():
    ram = BytesRam(16)
    dest = receiving(ram)
    event = first_deferred(dest, ram)
    stale = PagesToDecode(job=dataclasses.replace(event.job))  # the same work, another job

    with pytest.raises(LocalProtocolError, match="not waiting to be decoded"):
        dest.pages_decoded(stale, b"")
    assert dest.pages_decoded(event, event.job.run()).normal_pages == 4
