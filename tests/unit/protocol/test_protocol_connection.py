"""SourceConnection/DestConnection behaviour: I/O contract, pause discipline, checksums, errors."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.pair import (
    PAGE_SIZE,
    ConnectionPair,
    drain,
    make_batch,
    make_config,
    pattern_ram,
    run_migration,
    sent_bytes,
)

from protocol import (
    CRC32_VERSION,
    PREVIOUS_VERSION,
    PROTOCOL_VERSION,
    ChannelAnnounced,
    ChannelRole,
    ConfigurationReceived,
    ConnectionClosed,
    DestConnection,
    DestinationFailed,
    ErrorCode,
    FrameKind,
    LocalProtocolError,
    MainState,
    PageKind,
    ProtocolError,
    RamPagesReceived,
    RemoteProtocolError,
    ReturnState,
    SectionPartReceived,
    SourceConnection,
    StreamStarted,
)
from protocol.config import encode_configuration
from protocol.frames import encode_frame
from protocol.meta import pack_meta
from vmsim import GuestRam, RamLoader

N, Z = PageKind.NORMAL, PageKind.ZERO


def started_pair(**kwargs) -> tuple[ConnectionPair, bytearray]:
    """A pair past the configuration with the RAM section (id 1) open and RAM attached."""
    pair = ConnectionPair(**kwargs)
    ram = pattern_ram(16)
    pair.source.send_configuration(make_config())
    if pair.return_path:
        pair.source.send_open_return_path()
    pair.source.send_section_start(1, "ram", 0, 4, {"ram_size": len(ram), "page_size": PAGE_SIZE})
    pair.to_dest()
    return pair, ram


def test_protocol_error_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        ProtocolError("nope")
    assert isinstance(LocalProtocolError("x"), ProtocolError)


def test_full_migration_with_return_path():
    pair = ConnectionPair()
    ram = pattern_ram(16)
    dest_events, source_events = run_migration(pair, ram)
    closed = pair.close()

    assert MainState.HANDED_OVER == pair.source.our_state
    assert ReturnState.RESUMED == pair.dest.our_state
    assert (MainState.CLOSED, ReturnState.CLOSED) == (
        pair.dest.their_state,
        pair.source.their_state,
    )
    assert ([ConnectionClosed(clean=True)], [ConnectionClosed(clean=True)]) == closed
    expected = bytearray(len(ram))
    for first, count in ((0, 2), (5, 3), (8, 1)):
        expected[first * PAGE_SIZE : (first + count) * PAGE_SIZE] = ram[
            first * PAGE_SIZE : (first + count) * PAGE_SIZE
        ]
    assert expected == pair.dest_ram
    assert len(dest_events) > len(source_events) > 0


def test_ram_frame_buffers_are_guest_ram_slices_coalesced():
    """get_buffers() after a RAM frame's meta: one slice per run of pages, footer, next header."""
    pair, ram = started_pair(return_path=False)
    pair.source.send_ram(
        1, make_batch(ram, [(0, 2, N), (2, 1, N), (3, 1, Z), (6, 2, N)]), end=False
    )
    stream = sent_bytes(pair.source)
    meta_len = int.from_bytes(stream[8:12], "big")
    pair.dest.receive_data(stream[: 16 + meta_len], 0.0)
    buffers = pair.dest.get_buffers()

    assert [3 * PAGE_SIZE, 2 * PAGE_SIZE, 16, 16] == [len(b) for b in buffers]
    assert pair.dest_guest_ram.array is buffers[0].obj
    assert pair.dest_guest_ram.array is buffers[1].obj
    assert all(not b.readonly for b in buffers)


def test_fragmented_ram_frame_is_received_whole_then_scattered():
    pair, ram = started_pair(return_path=False)
    pair.dest_ram[:] = b"\xff" * len(pair.dest_ram)
    runs = [(p, 1, N) for p in range(0, 16, 2)] + [(1, 1, Z), (5, 1, Z)]
    pair.source.send_ram(1, make_batch(ram, runs), end=False)
    stream = sent_bytes(pair.source)
    meta_len = int.from_bytes(stream[8:12], "big")
    pair.dest.receive_data(stream[: 16 + meta_len], 0.0)
    buffers = pair.dest.get_buffers()
    pair.dest.receive_data(stream[16 + meta_len :], 0.0)
    events = drain(pair.dest)

    assert [8 * PAGE_SIZE, 16, 16] == [len(b) for b in buffers]
    assert pair.dest_guest_ram.array is not buffers[0].obj
    assert 1 == len(events)
    for first, _count, kind in runs:
        page = slice(first * PAGE_SIZE, (first + 1) * PAGE_SIZE)
        expected = ram[page] if kind == N else bytes(PAGE_SIZE)
        assert expected == pair.dest_ram[page], first


def test_zero_runs_are_zero_filled():
    pair, ram = started_pair(return_path=False)
    pair.dest_ram[:] = b"\xff" * len(pair.dest_ram)
    pair.source.send_ram(1, make_batch(ram, [(4, 3, Z), (9, 1, N)]), end=False)
    (event,) = pair.to_dest()

    assert (1, 3) == (event.normal_pages, event.zero_pages)
    assert bytes(3 * PAGE_SIZE) == pair.dest_ram[4 * PAGE_SIZE : 7 * PAGE_SIZE]
    assert ram[9 * PAGE_SIZE : 10 * PAGE_SIZE] == pair.dest_ram[9 * PAGE_SIZE : 10 * PAGE_SIZE]
    assert b"\xff" * PAGE_SIZE == pair.dest_ram[3 * PAGE_SIZE : 4 * PAGE_SIZE]
    assert event.data is None


def test_without_ram_the_event_carries_the_page_data():
    pair, ram = started_pair(return_path=False, attach_ram=False)
    pair.source.send_switchover_start()
    pair.to_dest()
    pair.source.send_ram(1, make_batch(ram, [(2, 2, N), (7, 1, Z), (12, 1, N)]), end=True)
    (event,) = pair.to_dest()

    assert isinstance(event, RamPagesReceived)
    expected = ram[2 * PAGE_SIZE : 4 * PAGE_SIZE] + ram[12 * PAGE_SIZE : 13 * PAGE_SIZE]
    assert expected == bytes(event.data)
    assert [(2, 2, 1), (7, 1, 2), (12, 1, 1)] == [
        (int(r["first_pfn"]), int(r["n_pages"]), int(r["kind"])) for r in event.runs
    ]
    assert event.end


def test_pause_discipline():
    """Nothing of frame i+1 is parsed, and no buffer for it is offered, before event i is taken."""
    pair, ram = started_pair(return_path=False, attach_ram=False)
    dest = pair.dest
    while dest.next_event() is not None:
        pass
    pair.source.send_ram(1, make_batch(ram, [(0, 1, N)]), end=False)
    good = sent_bytes(pair.source)
    bad = encode_frame(2, 0x55, 0, pack_meta({}))  # an unknown kind: fails when parsed
    dest.receive_data(good + bad[:16], 0.0)

    assert [] == dest.get_buffers()  # paused, although the next header is complete
    dest.receive_data(bad[16:], 0.0)  # held, not parsed
    assert isinstance(dest.next_event(), RamPagesReceived)
    with pytest.raises(RemoteProtocolError, match="unknown main-stream frame kind 0x55"):
        dest.next_event()
    assert [] == dest.get_buffers()


def test_buffers_are_offered_again_once_the_event_is_taken():
    pair, _ram = started_pair(return_path=False)
    dest = pair.dest
    pair.source.send_switchover_start()
    pair.to_dest()
    pair.source.send_eof()
    frame = sent_bytes(pair.source)
    header_and_meta = 17
    dest.receive_data(frame[:header_and_meta], 0.0)

    assert [16, 16] == [len(b) for b in dest.get_buffers()]
    dest.receive_data(frame[header_and_meta:], 0.0)
    assert [] == dest.get_buffers()
    assert dest.next_event() is not None
    assert [16] == [len(b) for b in dest.get_buffers()]


def test_events_before_an_error_come_first_and_the_error_is_sticky():
    pair, _ram = started_pair(return_path=False)
    drain(pair.dest)
    pair.source.send_switchover_start()
    good = sent_bytes(pair.source)
    corrupt = bytearray(good)
    corrupt[-1] ^= 1
    pair.dest.receive_data(good + bytes(corrupt), 0.0)

    assert pair.dest.next_event() is not None
    with pytest.raises(RemoteProtocolError) as first:
        pair.dest.next_event()
    with pytest.raises(RemoteProtocolError) as again:
        pair.dest.next_event()
    assert first.value is again.value
    assert ErrorCode.CHECKSUM_MISMATCH == first.value.code
    assert MainState.ERROR == pair.dest.their_state


def test_checksum_covers_bytes_as_sent_not_as_queued():
    """A page written after queueing (even mid-frame) arrives as sent, with a valid checksum."""
    pair, _ = started_pair(return_path=False)
    drain(pair.dest)
    guest = bytearray(pattern_ram(16))
    pair.source.send_ram(1, make_batch(guest, [(0, 4, N)]), end=False)
    out = pair.source.data_to_send()
    prefix = sum(len(b) for b in out[:2]) + 100
    first = b"".join(bytes(b) for b in out)[:prefix]
    pair.source.data_sent(prefix, 0.0)
    guest[50:60] = b"X" * 10  # already sent: no effect on the wire
    guest[3 * PAGE_SIZE : 3 * PAGE_SIZE + 5] = b"torn!"  # not yet sent: goes out modified
    rest = bytearray()
    while chunk := pair.source.data_to_send():
        data = b"".join(bytes(b) for b in chunk)
        pair.source.data_sent(len(data), 0.0)
        rest += data
    pair.deliver(pair.dest, first + bytes(rest))

    assert b"torn!" == pair.dest_ram[3 * PAGE_SIZE : 3 * PAGE_SIZE + 5]
    assert pattern_ram(16)[50:60] == pair.dest_ram[50:60]


def test_footer_is_not_offered_before_the_body_is_sent():
    pair, ram = started_pair(return_path=False)
    pair.to_dest()
    pair.source.send_ram(1, make_batch(ram, [(0, 1, N)]), end=False)
    pair.source.send_switchover_start()  # queued behind the RAM frame's missing footer
    out = pair.source.data_to_send()
    body = sum(len(b) for b in out)

    assert 3 == len(out)  # header, meta, page view: no footer, no next frame yet
    assert isinstance(out[2], memoryview)
    assert out[2].readonly
    assert body + 16 + 38 == pair.source.pending_send_bytes
    pair.source.data_sent(body - 1, 0.0)
    assert [1] == [len(b) for b in pair.source.data_to_send()]
    pair.source.data_sent(1, 0.0)
    after = pair.source.data_to_send()
    assert [16, 16, 6, 16] == [len(b) for b in after]  # footer, then the next frame
    assert 54 == pair.source.pending_send_bytes


def test_data_sent_beyond_offer_is_local_error():
    pair, _ram = started_pair()
    pair.source.send_switchover_start()
    offered = sum(len(b) for b in pair.source.data_to_send())

    with pytest.raises(LocalProtocolError, match="data_sent"):
        pair.source.data_sent(offered + 1, 0.0)
    with pytest.raises(LocalProtocolError):
        pair.source.data_sent(-1, 0.0)
    pair.source.data_sent(offered, 0.0)
    assert 0 == pair.source.pending_send_bytes


def test_buffers_filled_beyond_offer_and_data_after_eof_are_local_errors():
    dest = DestConnection(now=0.0)
    with pytest.raises(LocalProtocolError, match="buffers_filled"):
        dest.buffers_filled(25, 0.0)
    dest.receive_eof(0.0)
    with pytest.raises(LocalProtocolError, match="after receive_eof"):
        dest.receive_data(b"x", 0.0)
    assert [ConnectionClosed(clean=False)] == drain(dest)


def test_refused_send_changes_nothing():
    source = SourceConnection(now=0.0)
    with pytest.raises(LocalProtocolError, match="illegal in main-stream state STARTED"):
        source.send_eof()
    assert (MainState.IDLE, 0) == (source.our_state, source.pending_send_bytes)
    source.send_configuration(make_config())
    with pytest.raises(LocalProtocolError) as info:
        source.send_section_start(1, "x" * 300, 0, 1, {})
    assert ErrorCode.BAD_METADATA == info.value.code
    assert info.value.frame is not None
    assert (2, 1) == (info.value.frame.index, info.value.frame.section_id)  # after CHANNEL, CONFIG
    assert MainState.CONFIGURED == source.our_state


@pytest.mark.parametrize(
    ("runs", "data_pages", "code", "match"),
    [
        ([(15, 2, N)], None, ErrorCode.BAD_PAGE_ADDRESS, "beyond guest RAM"),
        ([(0, 2, N), (1, 1, Z)], None, ErrorCode.BAD_METADATA, "overlap"),
        ([(0, 1, PageKind.XBZRLE)], None, ErrorCode.BAD_METADATA, "0 data buffers for 1 runs"),
        ([(0, 1, 9)], None, ErrorCode.BAD_METADATA, "unknown"),
        ([(0, 1, PageKind.EOS)], None, ErrorCode.BAD_METADATA, "EOS"),
        ([(0, 0, Z)], None, ErrorCode.BAD_METADATA, "n_pages 0"),
        ([(0, 2, N)], [1], ErrorCode.BAD_METADATA, "buffer 0 is 4096 bytes, its run needs 8192"),
        ([(0, 2, N)], [], ErrorCode.BAD_METADATA, "0 data buffers for 1 NORMAL/XBZRLE"),
    ],
)
def test_send_ram_refuses_bad_batches(runs, data_pages, code, match):
    pair, ram = started_pair()
    batch = make_batch(ram, runs)
    if data_pages is not None:
        batch = dataclasses.replace(
            batch, data=tuple(memoryview(ram)[: n * PAGE_SIZE] for n in data_pages)
        )
    pending = pair.source.pending_send_bytes

    with pytest.raises(LocalProtocolError, match=match) as info:
        pair.source.send_ram(1, batch, end=False)
    assert code == info.value.code
    assert "ram" == info.value.idstr
    assert pending == pair.source.pending_send_bytes


def test_send_ram_to_another_section_and_part_to_ram_are_refused():
    pair, ram = started_pair()
    pair.source.send_section_start(5, "blk", 0, 1, {})
    with pytest.raises(LocalProtocolError, match="is not the RAM section"):
        pair.source.send_ram(5, make_batch(ram, []), end=False)
    with pytest.raises(LocalProtocolError, match="'ram' is the RAM section"):
        pair.source.send_section_part(1, {"x": 1}, end=False)
    with pytest.raises(LocalProtocolError, match="not opened"):
        pair.source.send_section_part(6, {"x": 1}, end=False)
    pair.source.send_section_part(5, {"blocks": [1, 2]}, end=False)
    events = pair.to_dest()
    assert [SectionPartReceived] == [type(e) for e in events[1:]]


def test_section_rules():
    pair, _ram = started_pair()
    src = pair.source
    with pytest.raises(LocalProtocolError, match="already in use"):
        src.send_section_start(1, "blk", 0, 1, {})
    with pytest.raises(LocalProtocolError, match="already started"):
        src.send_section_start(9, "ram", 0, 4, {})
    with pytest.raises(LocalProtocolError, match="not listed in the configuration"):
        src.send_section_full(7, "serial0", 0, 2, {})
    with pytest.raises(LocalProtocolError, match="already in use"):
        src.send_section_full(1, "serial0", 0, 1, {})
    src.send_switchover_start()
    src.send_ram(1, make_batch(None, [(0, 1, Z)]), end=True)
    src.send_ram(1, make_batch(None, [(1, 1, Z)]), end=True)  # the final pass spans frames
    with pytest.raises(
        LocalProtocolError, match="SECTION_PART is illegal in main-stream state SWITCHOVER"
    ):
        src.send_ram(1, make_batch(None, []), end=False)


def test_ram_setup_must_match_configuration():
    source = SourceConnection(return_path=False, now=0.0)
    source.send_configuration(make_config())
    with pytest.raises(LocalProtocolError) as info:
        source.send_section_start(1, "ram", 0, 4, {"ram_size": 1 << 20, "page_size": PAGE_SIZE})
    assert ErrorCode.CONFIG_MISMATCH == info.value.code
    with pytest.raises(LocalProtocolError) as info:
        source.send_section_start(1, "ram", 0, 4, {"ram_size": 16 * PAGE_SIZE})
    assert ErrorCode.BAD_METADATA == info.value.code


def test_a_page_sink_is_attached_after_the_configuration():
    dest = DestConnection(now=0.0)
    with pytest.raises(LocalProtocolError, match="before the configuration"):
        dest.attach_sink(RamLoader(GuestRam(16 * PAGE_SIZE)))


def test_dest_in_file_mode_cannot_reply():
    dest = DestConnection(return_path=False, now=0.0)
    with pytest.raises(LocalProtocolError, match="no return path"):
        dest.send_failed(ErrorCode.BUSY, "busy")


def test_failed_before_anything_uses_our_version_and_is_clean_end():
    pair = ConnectionPair()
    pair.dest.send_failed(ErrorCode.BUSY, "already receiving")
    events = pair.to_source()

    assert pair.return_stream.startswith(b"LVRP\x00\x03\x00\x00")
    assert DestinationFailed(
        code=ErrorCode.BUSY, reason="already receiving"
    ) == dataclasses.replace(events[1], frame=None)
    pair.source.receive_eof(0.0)
    assert [ConnectionClosed(clean=True)] == drain(pair.source)


@pytest.mark.parametrize(
    ("mutate", "code", "match"),
    [
        (lambda f: b"QEVM" + f[4:], ErrorCode.BAD_MAGIC, "magic b'QEVM' != b'LVMG'"),
        (
            lambda f: f[:4] + b"\x00\x07" + f[6:],
            ErrorCode.UNSUPPORTED_VERSION,
            "unsupported protocol version 7: this receiver accepts versions 1 to 3",
        ),
        (lambda f: f[:6] + b"\x00\x01" + f[8:], ErrorCode.PROTOCOL_ERROR, "reserved"),
        (lambda f: f[:9] + b"\x01" + f[10:], ErrorCode.PROTOCOL_ERROR, "flags 0x01"),
        (
            lambda f: f[:8] + b"\x05" + f[9:],
            ErrorCode.PROTOCOL_ERROR,
            "unknown main-stream frame kind",
        ),
    ],
)
def test_header_errors(mutate, code, match):
    source = SourceConnection(now=0.0)
    source.send_configuration(make_config())
    dest = DestConnection(now=0.0)
    dest.receive_data(mutate(sent_bytes(source)), 0.0)

    with pytest.raises(RemoteProtocolError, match=match) as info:
        drain(dest)
    assert code == info.value.code


@pytest.mark.parametrize("version", [CRC32_VERSION, PREVIOUS_VERSION])
def test_older_sender_end_to_end(version):
    """A version 1 or 2 source (no CHANNEL handshake) migrates to a version 3 destination."""
    pair_old = ConnectionPair(version=version)
    pair_new = ConnectionPair()
    ram = pattern_ram(16)
    events_old = run_migration(pair_old, ram)
    events_new = run_migration(pair_new, ram)

    assert StreamStarted(version=version) == events_old[0][0]
    assert pair_old.return_stream.startswith(b"LVRP\x00" + bytes([version]))  # it follows

    def strip(events):
        return [dataclasses.replace(e, frame=None) if hasattr(e, "frame") else e for e in events]

    assert isinstance(events_new[0][1], ChannelAnnounced)
    assert strip(events_new[0][2:]) == strip(events_old[0][1:])
    assert [type(e) for e in events_new[1]] == [type(e) for e in events_old[1]]
    assert pair_old.dest_ram == pair_new.dest_ram


def test_source_refuses_unknown_version():
    with pytest.raises(LocalProtocolError) as info:
        SourceConnection(version=4, now=0.0)
    assert ErrorCode.UNSUPPORTED_VERSION == info.value.code


def test_return_path_version_must_be_supported():
    pair = ConnectionPair()
    pair.source.send_configuration(make_config())
    pair.source.send_open_return_path()
    pair.to_dest()
    pair.source.receive_data(b"LVRP\x00\x09\x00\x00", 0.0)
    with pytest.raises(RemoteProtocolError, match="unsupported protocol version 9") as info:
        drain(pair.source)
    assert ErrorCode.UNSUPPORTED_VERSION == info.value.code


@pytest.mark.parametrize(
    ("kind", "section_id", "meta", "code", "match"),
    [
        (FrameKind.COMMAND, 0, {"cmd": 99}, ErrorCode.UNKNOWN_COMMAND, "unknown command 99"),
        (FrameKind.COMMAND, 0, {"cmd": 2}, ErrorCode.BAD_METADATA, "missing keys \\['value'\\]"),
        (
            FrameKind.COMMAND,
            0,
            {"cmd": 2, "value": 1, "x": 0},
            ErrorCode.BAD_METADATA,
            "unknown keys \\['x'\\]",
        ),
        (FrameKind.COMMAND, 0, {"value": 1}, ErrorCode.BAD_METADATA, "missing key 'cmd'"),
        (FrameKind.COMMAND, 0, {"cmd": True}, ErrorCode.BAD_METADATA, "must be an int"),
        (
            FrameKind.COMMAND,
            0,
            {"cmd": 0x41, "code": 999, "reason": ""},
            ErrorCode.BAD_METADATA,
            "not an ErrorCode",
        ),
        (FrameKind.COMMAND, 3, {"cmd": 2, "value": 1}, ErrorCode.PROTOCOL_ERROR, "section id 0"),
        (FrameKind.SECTION_PART, 1, {"payload": {}}, ErrorCode.BAD_METADATA, "missing keys"),
        (
            FrameKind.SECTION_PART,
            1,
            {"runs": b"", "eos": False},
            ErrorCode.BAD_METADATA,
            "'eos' must be true",
        ),
        (FrameKind.SECTION_PART, 4, {"payload": {}}, ErrorCode.UNEXPECTED_SECTION, "not opened"),
        (
            FrameKind.SECTION_FULL,
            2,
            {"idstr": "serial0", "instance_id": 0, "version_id": 1, "state": []},
            ErrorCode.BAD_METADATA,
            "'state' must be a map",
        ),
    ],
)
def test_receiver_refuses_bad_frames(kind, section_id, meta, code, match):
    pair, _ram = started_pair()
    drain(pair.dest)
    frame = encode_frame(2, kind, section_id, pack_meta(meta))

    with pytest.raises(RemoteProtocolError, match=match) as info:
        pair.deliver(pair.dest, frame)
    assert code == info.value.code
    assert info.value.frame is not None
    assert 4 == info.value.frame.index  # CHANNEL, CONFIGURATION, OPEN_RETURN_PATH, START


def test_data_on_a_frame_without_data_is_refused():
    pair, _ram = started_pair()
    drain(pair.dest)
    frame = encode_frame(2, FrameKind.COMMAND, 0, pack_meta({"cmd": 2, "value": 1}), [b"abc"])
    with pytest.raises(RemoteProtocolError, match="carry no data"):
        pair.deliver(pair.dest, frame)


def test_ram_data_len_must_match_runs():
    pair, ram = started_pair()
    drain(pair.dest)
    pair.source.send_ram(1, make_batch(ram, [(0, 1, N)]), end=False)
    good = sent_bytes(pair.source)
    meta_len = int.from_bytes(good[8:12], "big")
    meta = good[16 : 16 + meta_len]
    frame = encode_frame(2, FrameKind.SECTION_PART, 1, meta, [good[16 + meta_len : -16], b"x"])
    with pytest.raises(RemoteProtocolError, match="data_len 4097 != 1 NORMAL pages") as info:
        pair.deliver(pair.dest, frame)
    assert "ram" == info.value.idstr


def test_return_path_refusals():
    pair = ConnectionPair()
    pair.source.send_configuration(make_config())
    pair.source.send_open_return_path()
    pair.to_dest()
    header = b"LVRP\x00\x02\x00\x00"
    cases = [
        (
            encode_frame(2, 0x03, 0, pack_meta({})),
            ErrorCode.UNEXPECTED_SECTION,
            "REQ_PAGES is illegal in return-path state STARTED",
        ),
        (encode_frame(2, 0x44, 0, pack_meta({})), ErrorCode.PROTOCOL_ERROR, "unknown return-path"),
        (
            encode_frame(2, 0x01, 7, pack_meta({"version": 2})),
            ErrorCode.PROTOCOL_ERROR,
            "section id 0",
        ),
        (
            encode_frame(2, 0x01, 0, pack_meta({"version": 1})),
            ErrorCode.UNSUPPORTED_VERSION,
            "OPEN_ACK names version 1",
        ),
        (
            encode_frame(2, 0x13, 0, pack_meta({"migration_id": "m", "outcome": "committed"})),
            ErrorCode.UNEXPECTED_SECTION,
            "OUTCOME is illegal while the main stream is in state SETUP",
        ),
    ]
    for frame, code, match in cases:
        source = SourceConnection(now=0.0)
        source.send_configuration(make_config())
        source.send_open_return_path()
        source.receive_data(header + frame, 0.0)
        with pytest.raises(RemoteProtocolError, match=match) as info:
            drain(source)
        assert code == info.value.code


def test_outcome_must_name_the_resolved_migration():
    pair = ConnectionPair()
    pair.source.send_resolve("mig-0001")
    pair.to_dest()
    with pytest.raises(LocalProtocolError, match="RESOLVE asked for 'mig-0001'"):
        pair.dest.send_outcome("mig-0002", "committed")
    bad_value = encode_frame(2, 0x13, 0, pack_meta({"migration_id": "mig-0001", "outcome": "x"}))
    pair.source.receive_data(b"LVRP\x00\x02\x00\x00" + bad_value, 0.0)
    with pytest.raises(RemoteProtocolError, match="'outcome' = 'x' is not one of") as info:
        drain(pair.source)
    assert ErrorCode.BAD_METADATA == info.value.code


@pytest.mark.parametrize(
    ("prefix_steps", "clean"),
    [
        ([], False),
        (["config"], False),
        (["config", "eof"], True),
        (["config", "eof", "vmdesc"], True),
        (["config", "abort"], True),
    ],
)
def test_file_mode_close_is_clean_only_at_a_legal_end(prefix_steps, clean):
    source = SourceConnection(return_path=False, now=0.0)
    steps = {
        "config": lambda: (
            source.send_configuration(make_config()),
            source.send_switchover_start(),
        ),
        "eof": source.send_eof,
        "vmdesc": lambda: source.send_vmdesc({}),
        "abort": lambda: source.send_abort(ErrorCode.CANCELLED, "cancel"),
    }
    for step in prefix_steps:
        steps[step]()
    dest = DestConnection(return_path=False, now=0.0)
    dest.receive_data(sent_bytes(source), 0.0)
    dest.receive_eof(0.0)

    assert ConnectionClosed(clean=clean) == drain(dest)[-1]


def test_return_path_close_before_resumed_is_unclean_for_the_source():
    pair = ConnectionPair()
    run_migration(pair, pattern_ram(16), handover=False)
    pair.source.send_handover()
    pair.to_dest()
    dest_events, source_events = pair.close()

    assert [ConnectionClosed(clean=True)] == dest_events  # HANDOVER is a legal end of the stream
    assert [ConnectionClosed(clean=False)] == source_events  # in doubt: no RESUMED


def test_truncated_frame_is_an_error_naming_the_frame():
    pair, _ram = started_pair()
    drain(pair.dest)
    pair.source.send_switchover_start()
    frame = sent_bytes(pair.source)
    pair.dest.receive_data(frame[:20], 0.0)
    pair.dest.receive_eof(0.0)

    with pytest.raises(RemoteProtocolError, match="ended inside frame 4") as info:
        drain(pair.dest)
    assert ErrorCode.TRUNCATED == info.value.code
    assert (4, FrameKind.COMMAND) == (info.value.frame.index, info.value.frame.kind)


def test_configuration_event_and_accessors():
    pair = ConnectionPair()
    config = make_config(
        uuid="12345678-1234-5678-1234-567812345678", capabilities=["x-ignore-shared"]
    )
    pair.source.send_configuration(config)
    events = pair.to_dest()

    channel = ChannelAnnounced(migration_id=config.migration_id, role=ChannelRole.MAIN)
    assert channel == dataclasses.replace(events[1], frame=None)
    assert channel == dataclasses.replace(pair.dest.channel, frame=None)
    assert ConfigurationReceived(config=config) == dataclasses.replace(events[2], frame=None)
    assert config == pair.dest.configuration == pair.source.configuration
    assert PROTOCOL_VERSION == pair.dest.version
    assert (0, 8) == (events[1].frame.index, events[1].frame.offset)
    assert 1 == events[2].frame.index


def test_a_configuration_must_name_the_migration_of_its_channel():
    source = SourceConnection(now=0.0)
    source.send_channel("mig-0001", ChannelRole.MAIN)
    with pytest.raises(LocalProtocolError, match="names migration 'mig-0002'") as sent:
        source.send_configuration(make_config(migration_id="mig-0002"))
    stream = sent_bytes(source) + encode_frame(
        PROTOCOL_VERSION,
        FrameKind.CONFIGURATION,
        0,
        pack_meta(encode_configuration(make_config(migration_id="mig-0002"))),
    )
    dest = DestConnection(now=0.0)
    dest.receive_data(stream, 0.0)

    with pytest.raises(RemoteProtocolError, match="names migration 'mig-0002'") as received:
        drain(dest)
    assert ErrorCode.CONFIG_MISMATCH == sent.value.code == received.value.code


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"migration_id": "m", "role": "listen", "index": 0}, "unknown channel role 'listen'"),
        ({"migration_id": "m", "role": "multifd", "index": 255}, "index is below 255, not 255"),
        ({"migration_id": "m", "role": "main", "index": 1}, "index 0, not 1"),
        ({"migration_id": "m", "role": "main"}, "missing keys \\['index'\\]"),
    ],
)
def test_bad_channel_handshakes_are_refused(meta, match):
    dest = DestConnection(now=0.0)
    frame = encode_frame(PROTOCOL_VERSION, FrameKind.COMMAND, 0, pack_meta({"cmd": 0x43, **meta}))
    dest.receive_data(b"LVMG\x00\x03\x00\x00" + frame, 0.0)

    with pytest.raises(RemoteProtocolError, match=match) as info:
        drain(dest)
    assert ErrorCode.BAD_METADATA == info.value.code


def test_a_version_3_connection_must_open_with_its_channel_handshake():
    source = SourceConnection(version=PREVIOUS_VERSION, now=0.0)  # no handshake at version 2
    source.send_configuration(make_config())
    stream = bytearray(sent_bytes(source))
    stream[5] = PROTOCOL_VERSION  # ... claiming version 3
    dest = DestConnection(now=0.0)
    dest.receive_data(bytes(stream), 0.0)

    with pytest.raises(RemoteProtocolError, match="CONFIGURATION is illegal in main-stream state"):
        drain(dest)
