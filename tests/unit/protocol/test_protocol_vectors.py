"""Golden vectors: decode each, re-encode through the public API, get the same bytes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers.pair import (
    decode_main,
    make_config,
    pattern_ram,
    replay_main,
    replay_return,
    sent_bytes,
)
from vectors.generate import build_vectors, multifd_config

from protocol import (
    CRC32_VERSION,
    PREVIOUS_VERSION,
    PROTOCOL_VERSION,
    ChannelAnnounced,
    ChannelRole,
    ConnectionClosed,
    DestConnection,
    DestinationResumed,
    DeviceStateReceived,
    LoadCompleted,
    MultifdPagesReceived,
    MultifdSynced,
    Outcome,
    OutcomeReported,
    PageKind,
    PagesDiscarded,
    PagesRequested,
    PongReceived,
    PostcopyResumed,
    PostcopyRunning,
    PrecopyResumed,
    RamPagesReceived,
    ReceivedBitmap,
    RemoteProtocolError,
    ResumePointReported,
    SourceConnection,
    StreamEnded,
    StreamStarted,
    SwitchoverStarted,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def load(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def test_generator_reproduces_the_files():
    """The vectors on disk are exactly what generate.py builds (no silent drift)."""
    for name, data in build_vectors().items():
        assert data == load(name), name


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("file_v3.bin", PROTOCOL_VERSION),
        ("file_v2.bin", PREVIOUS_VERSION),
        ("file_v1.bin", CRC32_VERSION),
    ],
)
def test_file_vector_decodes_and_reencodes(name, version):
    stream = load(name)
    events = decode_main(stream, return_path=False)

    assert StreamStarted(version=version) == events[0]
    assert ConnectionClosed(clean=True) == events[-1]
    ram = [e for e in events if isinstance(e, RamPagesReceived)]
    assert [(5, 1), (1, 2)] == [(e.normal_pages, e.zero_pages) for e in ram]
    full = [e for e in events if isinstance(e, DeviceStateReceived)]
    assert ["cpu", "serial0"] == [e.idstr for e in full]
    source = SourceConnection(version=version, return_path=False, timeouts=None, now=0.0)
    replay_main(events, source)
    assert stream == sent_bytes(source)


def test_versions_differ_only_in_header_and_checksums():
    v1, v2 = load("file_v1.bin"), load("file_v2.bin")
    differing = [i for i in range(len(v1)) if v1[i] != v2[i]]

    assert len(v1) == len(v2)
    assert 5 == differing[0]  # the version's low byte; everything else is footer checksums
    assert len(differing) <= 1 + 8 * 13


def test_file_streams_of_versions_2_and_3_differ_only_in_the_version():
    """The CHANNEL handshake is for network connections: a file is the same stream."""
    v2, v3 = load("file_v2.bin"), load("file_v3.bin")

    assert [5] == [i for i in range(len(v2)) if v2[i] != v3[i]]


@pytest.mark.parametrize(
    ("stem", "role"), [("return_path", ChannelRole.MAIN), ("resolve", ChannelRole.RESOLVE)]
)
def test_version_3_connections_open_with_their_channel_handshake(stem, role):
    events = decode_main(load(f"{stem}.main.bin"), return_path=True)

    assert ChannelAnnounced(migration_id="mig-0001", role=role) == _unframed(events[1])
    assert not any(
        isinstance(e, ChannelAnnounced)
        for e in decode_main(load(f"{stem}_v2.main.bin"), return_path=True)
    )


def _unframed(event: object) -> object:
    return dataclasses.replace(event, frame=None)  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("stem", "version"),
    [
        ("return_path", PROTOCOL_VERSION),
        ("resolve", PROTOCOL_VERSION),
        ("return_path_v2", PREVIOUS_VERSION),
        ("resolve_v2", PREVIOUS_VERSION),
    ],
)
def test_exchange_vectors_decode_and_reencode(stem, version):
    main_stream, return_stream = load(f"{stem}.main.bin"), load(f"{stem}.return.bin")
    main_events = decode_main(main_stream, return_path=True)
    source = SourceConnection(version=version, timeouts=None, now=0.0)
    replay_main(main_events, source)

    assert main_stream == sent_bytes(source)
    source.receive_data(return_stream, 0.0)
    source.receive_eof(0.0)
    replies = []
    while (event := source.next_event()) is not None:
        replies.append(event)
    assert ConnectionClosed(clean=True) == replies[-1]
    assert return_stream == replay_return(main_stream, replies)


def test_resolve_vector_content():
    source = SourceConnection(timeouts=None, now=0.0)
    replay_main(decode_main(load("resolve.main.bin"), return_path=True), source)
    sent_bytes(source)
    source.receive_data(load("resolve.return.bin"), 0.0)
    events = []
    while (event := source.next_event()) is not None:
        events.append(event)

    outcome = next(e for e in events if isinstance(e, OutcomeReported))
    assert ("mig-0001", Outcome.IN_DOUBT) == (outcome.migration_id, outcome.outcome)
    assert not any(isinstance(e, PongReceived) for e in events)


def decode_multifd(stream: bytes, ram: bytearray, *, tls: bool = False) -> list[object]:
    """The events of a multifd channel joined on CHANNEL (no sink), their pages put in `ram`."""
    dest = DestConnection(timeouts=None, now=0.0, authenticated=tls)
    dest.receive_data(stream, 0.0)
    dest.receive_eof(0.0)
    events: list[object] = []
    while (event := dest.next_event()) is not None:
        events.append(event)
        if isinstance(event, ChannelAnnounced):
            dest.join(multifd_config(), None)
        if isinstance(event, MultifdPagesReceived):
            data = bytes(event.data or b"")
            for first, count, kind, _pad in event.runs.tolist():
                span = slice(first * 1024, (first + count) * 1024)
                if kind == PageKind.NORMAL:
                    ram[span], data = data[: count * 1024], data[count * 1024 :]
                else:
                    ram[span] = bytes(count * 1024)
    return events


def test_multifd_vector_decodes_raw_zlib_and_zstd_pages():
    ram = bytearray(16 * 1024)
    events = decode_multifd(load("multifd.bin"), ram)

    assert ChannelAnnounced(migration_id="mig-0001", role=ChannelRole.MULTIFD, index=1) == (
        dataclasses.replace(events[1], frame=None)
    )
    pages = [e for e in events if isinstance(e, MultifdPagesReceived)]
    assert [(2, 1), (4, 0), (4, 0)] == [(e.normal_pages, e.zero_pages) for e in pages]
    assert [1, 2] == [e.pass_number for e in events if isinstance(e, MultifdSynced)]
    assert ConnectionClosed(clean=True) == events[-1]
    expected = pattern_ram(16, 1024)
    assert expected[: 2 * 1024] == ram[: 2 * 1024]
    assert expected[4 * 1024 : 8 * 1024] == ram[4 * 1024 : 8 * 1024]
    assert not any(ram[2 * 1024 : 4 * 1024])


def test_a_tls_multifd_vector_drops_its_checksums_and_needs_a_tls_receiver():
    stream = load("multifd_tls.bin")
    ram = bytearray(16 * 1024)
    events = decode_multifd(stream, ram, tls=True)

    announced = ChannelAnnounced(
        migration_id="mig-0001", role=ChannelRole.MULTIFD, index=0, checked=False
    )
    assert announced == dataclasses.replace(events[1], frame=None)
    assert ConnectionClosed(clean=True) == events[-1]
    assert pattern_ram(16, 1024)[: 2 * 1024] == ram[: 2 * 1024]
    with pytest.raises(RemoteProtocolError, match="not TLS"):
        decode_multifd(stream, bytearray(16 * 1024))


def test_preempt_vector_carries_requested_pages_then_eof():
    ram = bytearray(16 * 1024)
    events = decode_multifd(load("preempt.bin"), ram)

    assert ChannelAnnounced(migration_id="mig-0001", role=ChannelRole.PREEMPT, index=0) == (
        dataclasses.replace(events[1], frame=None)
    )
    pages = [e for e in events if isinstance(e, MultifdPagesReceived)]
    assert [1, 2] == [e.normal_pages for e in pages]
    assert ConnectionClosed(clean=True) == events[-1]
    expected = pattern_ram(16, 1024)
    assert expected[10 * 1024 : 11 * 1024] == ram[10 * 1024 : 11 * 1024]
    assert expected[3 * 1024 : 5 * 1024] == ram[3 * 1024 : 5 * 1024]


def test_postcopy_vector_content():
    """ADVISE, the switch (device page, discard, LISTEN, FULL, RUN), a request, the rest."""
    events = decode_main(load("postcopy.main.bin"), return_path=True)
    kinds = [type(e).__name__ for e in events]
    switch = kinds.index("PagesDiscarded")
    assert kinds[switch - 1 : switch + 4] == [
        "RamPagesReceived",
        "PagesDiscarded",
        "PostcopyListening",
        "DeviceStateReceived",
        "PostcopyRunning",
    ]
    assert kinds.index("PostcopyAdvised") < kinds.index("SectionStarted")
    discard = events[switch]
    assert isinstance(discard, PagesDiscarded)
    assert [3, 4, 9, 10, 11, 12] == discard.ranges.pages().tolist()
    main_events = decode_main(load("postcopy.main.bin"), return_path=True)
    source = SourceConnection(timeouts=None, now=0.0)
    replay_main(main_events, source)
    assert load("postcopy.main.bin") == sent_bytes(source)

    # The return path: OPEN_ACK and REQ_PAGES are legal once the source sent POSTCOPY_RUN.
    run = next(i for i, e in enumerate(main_events) if isinstance(e, PostcopyRunning))
    source = SourceConnection(timeouts=None, now=0.0)
    replay_main(main_events[: run + 1], source)
    sent_bytes(source)
    source.receive_data(load("postcopy.return.bin"), 0.0)
    replies, error = _events_until_error(source)
    assert "LOADED is illegal" in str(error)
    request = replies[-1]
    assert isinstance(request, PagesRequested)
    assert [10] == request.ranges.pages().tolist()
    rest = [
        LoadCompleted(digest="00ff", normal_pages=14, zero_pages=9, devices=1),
        DestinationResumed(runstate="running"),
    ]
    assert load("postcopy.return.bin") == replay_return(load("postcopy.main.bin"), replies + rest)


def _events_until_error(source: SourceConnection) -> tuple[list[object], Exception | None]:
    events: list[object] = []
    try:
        while (event := source.next_event()) is not None:
            events.append(event)
    except RemoteProtocolError as exc:
        return events, exc
    return events, None


def test_postcopy_recover_vector_decodes_and_reencodes():
    config = make_config(ram_pages=16, page_size=1024)
    main_stream, return_stream = (
        load("postcopy_recover.main.bin"),
        load("postcopy_recover.return.bin"),
    )
    dest = DestConnection(timeouts=None, now=0.0)
    announced, at = None, 0
    while announced is None:  # up to the handshake, then resume as the router does
        dest.receive_data(main_stream[at : at + 1], 0.0)
        at += 1
        while (event := dest.next_event()) is not None:
            if isinstance(event, ChannelAnnounced):
                announced = event
    assert ChannelRole.RECOVER == announced.role
    dest.resume(config, None, 1)
    dest.receive_data(main_stream[at:], 0.0)
    events = [announced]
    while (event := dest.next_event()) is not None:
        events.append(event)
    assert [PostcopyResumed, RamPagesReceived, RamPagesReceived, StreamEnded] == [
        type(e) for e in events[1:]
    ]

    source = SourceConnection(timeouts=None, now=0.0)
    source.open_recovery(config, 1)
    sent_bytes(source)
    source.receive_data(return_stream, 0.0)
    replies, error = _events_until_error(source)
    assert error is None
    bitmap = next(e for e in replies if isinstance(e, ReceivedBitmap))
    assert bytes([0b1110_0111, 0xFF]) == bitmap.bitmap


def test_precopy_resume_vector_decodes_and_reencodes():
    config = make_config(ram_pages=16, page_size=1024)
    main_stream = load("precopy_resume.main.bin")
    dest = DestConnection(timeouts=None, now=0.0)
    at = 0
    while not any(isinstance(e, ChannelAnnounced) for e in _drain(dest)):
        dest.receive_data(main_stream[at : at + 1], 0.0)
        at += 1
    dest.resume(config, None, 1)
    dest.receive_data(main_stream[at:], 0.0)
    events = _drain(dest)
    assert [PrecopyResumed, RamPagesReceived, SwitchoverStarted, RamPagesReceived, StreamEnded] == [
        type(e) for e in events
    ]

    source = SourceConnection(timeouts=None, now=0.0)
    source.open_recovery(config, 1)
    sent_bytes(source)
    source.receive_data(load("precopy_resume.return.bin"), 0.0)
    replies, error = _events_until_error(source)
    assert error is None
    assert [5] == [e.ram_frames for e in replies if isinstance(e, ResumePointReported)]


def _drain(conn: DestConnection) -> list[object]:
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events
