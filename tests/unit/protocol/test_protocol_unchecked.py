"""CHANNEL `checksum: none`: on a TLS channel the frames after the handshake carry no xxh3.

The AEAD of TLS 1.3 already authenticates every byte, so hashing each frame again is work for
nothing (measured: `python -m bench tls`, docs/benchmarks.md). Only a connection the daemon
knows to be TLS (`authenticated`) accepts it; anywhere else it is refused with BAD_METADATA.
"""

from __future__ import annotations

import pytest
from helpers.pair import (
    ConnectionPair,
    drain,
    make_batch,
    make_config,
    pattern_ram,
    run_migration,
    sent_bytes,
)

from protocol import (
    PREVIOUS_VERSION,
    PROTOCOL_VERSION,
    ChannelAnnounced,
    DestConnection,
    ErrorCode,
    FrameKind,
    PageKind,
    RamPagesReceived,
    RemoteProtocolError,
    SourceConnection,
)
from protocol.codes import FRAME_FOOTER_BYTES
from protocol.frames import encode_frame
from protocol.meta import pack_meta


def _footer_checksums(stream: bytes) -> list[int]:
    """The checksum field of every frame's footer, walking the frame headers."""
    offset, sums = 8, []
    while offset < len(stream):
        meta_len = int.from_bytes(stream[offset + 8 : offset + 12], "big")
        data_len = int.from_bytes(stream[offset + 12 : offset + 16], "big")
        end = offset + 16 + meta_len + data_len + FRAME_FOOTER_BYTES
        sums.append(int.from_bytes(stream[end - 8 : end], "big"))
        offset = end
    return sums


def test_an_authenticated_migration_drops_checksums_after_the_handshake():
    pair = ConnectionPair(authenticated=True)
    ram = pattern_ram(16)
    run_migration(pair, ram)

    sums = _footer_checksums(bytes(pair.main_stream))
    assert sums[0] != 0  # CHANNEL itself is checked: it says what follows
    assert len(sums) > 5
    assert set(sums[1:]) == {0}
    assert isinstance(pair.dest.channel, ChannelAnnounced)
    assert pair.dest.channel.checked is False
    assert ram[: 2 * 4096] == pair.dest_ram[: 2 * 4096]  # pages 0-1 went as normal pages


def test_a_plain_migration_keeps_them():
    pair = ConnectionPair()
    run_migration(pair, pattern_ram(16))

    assert 0 not in _footer_checksums(bytes(pair.main_stream))
    assert pair.dest.channel is not None
    assert pair.dest.channel.checked


def _flipped_page_byte(*, authenticated: bool) -> tuple[ConnectionPair, list]:
    """A RAM frame whose last page byte is flipped on the way; the destination's events."""
    pair = ConnectionPair(authenticated=authenticated)
    ram = pattern_ram(4)
    pair.source.send_configuration(make_config(migration_id="mig-0001", ram_pages=4))
    pair.source.send_open_return_path()
    pair.source.send_section_start(1, "ram", 0, 4, {"ram_size": len(ram), "page_size": 4096})
    pair.source.send_ram(1, make_batch(ram, [(0, 4, PageKind.NORMAL)]), end=False)
    stream = bytearray(sent_bytes(pair.source))
    stream[-FRAME_FOOTER_BYTES - 1] ^= 0x01
    pair.dest.receive_data(bytes(stream), 0.0)
    return pair, drain(pair.dest)


def test_a_flipped_byte_is_caught_by_the_checksum_or_left_to_tls():
    with pytest.raises(RemoteProtocolError) as info:
        _flipped_page_byte(authenticated=False)
    assert ErrorCode.CHECKSUM_MISMATCH == info.value.code

    _, events = _flipped_page_byte(authenticated=True)  # TLS would have refused the record
    assert isinstance(events[-1], RamPagesReceived)  # loaded: nothing here checks it any more


def test_a_connection_that_is_not_tls_refuses_to_drop_them():
    source = SourceConnection(now=0.0, authenticated=True)
    source.send_configuration(make_config())
    dest = DestConnection(now=0.0)  # a plaintext connection
    dest.receive_data(sent_bytes(source), 0.0)

    with pytest.raises(RemoteProtocolError, match="not TLS") as info:
        drain(dest)
    assert ErrorCode.BAD_METADATA == info.value.code


def test_checksum_can_only_be_none():
    meta = {"cmd": 0x43, "migration_id": "m", "role": "main", "index": 0, "checksum": "crc32"}
    frame = encode_frame(PROTOCOL_VERSION, FrameKind.COMMAND, 0, pack_meta(meta))
    dest = DestConnection(now=0.0, authenticated=True)
    dest.receive_data(b"LVMG\x00\x03\x00\x00" + frame, 0.0)

    with pytest.raises(RemoteProtocolError, match="can only be 'none', not 'crc32'") as info:
        drain(dest)
    assert ErrorCode.BAD_METADATA == info.value.code


def test_an_older_stream_has_no_handshake_and_keeps_its_checksums():
    pair = ConnectionPair(version=PREVIOUS_VERSION, authenticated=True)
    run_migration(pair, pattern_ram(16))

    assert 0 not in _footer_checksums(bytes(pair.main_stream))
