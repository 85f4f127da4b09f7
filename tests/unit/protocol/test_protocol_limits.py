"""Each ``Limits`` field at its edge: the limit passes, limit + 1 fails (both directions)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from helpers.pair import PAGE_SIZE, ConnectionPair, drain, make_batch, make_config, sent_bytes

from protocol import (
    DestConnection,
    ErrorCode,
    FrameKind,
    Limits,
    LocalProtocolError,
    PageKind,
    RemoteProtocolError,
    SourceConnection,
)
from protocol.frames import encode_frame
from protocol.meta import pack_meta

SECTION = {"idstr": "serial0", "instance_id": 0, "version_id": 1}


def prepared(limits: Limits, **config) -> tuple[SourceConnection, bytes]:
    source = SourceConnection(return_path=False, limits=limits, timeouts=None, now=0.0)
    source.send_configuration(make_config(**config))
    source.send_section_start(1, "ram", 0, 4, {"ram_size": 16 * PAGE_SIZE, "page_size": PAGE_SIZE})
    return source, sent_bytes(source)


def receive(limits: Limits, stream: bytes) -> list:
    dest = DestConnection(return_path=False, limits=limits, timeouts=None, now=0.0)
    dest.receive_data(stream, 0.0)
    return drain(dest)


def check_edge(limits: Limits, send_ok, send_bad, code: ErrorCode) -> None:
    """``send_ok`` is accepted by sender and receiver; ``send_bad`` refused by both."""
    source, prefix = prepared(limits)
    send_ok(source)
    frame = sent_bytes(source)
    assert 1 == len(receive(limits, prefix + frame)) - 3
    source, prefix = prepared(limits)
    with pytest.raises(LocalProtocolError) as local:
        send_bad(source)
    assert code == local.value.code
    source, prefix = prepared(
        dataclasses.replace(limits, **{f.name: 1 << 40 for f in _fields(limits)})
    )
    send_bad(source)
    with pytest.raises(RemoteProtocolError) as remote:
        receive(limits, prefix + sent_bytes(source))
    assert code == remote.value.code


def _fields(limits: Limits):
    return [f for f in dataclasses.fields(limits) if f.name != "max_ext_len"]


def full(state):
    return lambda s: s.send_section_full(2, "serial0", 0, 1, state)


def test_max_meta_bytes():
    meta = lambda n: {**SECTION, "state": {"b": b"x" * n}}  # noqa: E731
    size = len(pack_meta(meta(100)))
    limits = Limits(max_meta_bytes=size)
    check_edge(limits, full({"b": b"x" * 100}), full({"b": b"x" * 101}), ErrorCode.FRAME_TOO_LARGE)


def test_max_data_bytes():
    ram = bytearray(16 * PAGE_SIZE)
    ok = lambda s: s.send_ram(1, make_batch(ram, [(0, 4, PageKind.NORMAL)]), end=False)  # noqa: E731
    bad = lambda s: s.send_ram(1, make_batch(ram, [(0, 5, PageKind.NORMAL)]), end=False)  # noqa: E731
    check_edge(Limits(max_data_bytes=4 * PAGE_SIZE), ok, bad, ErrorCode.FRAME_TOO_LARGE)


def test_max_runs_counts_the_eos_record():
    zero = lambda n: [(2 * i, 1, PageKind.ZERO) for i in range(n)]  # noqa: E731
    ok = lambda s: s.send_ram(1, make_batch(None, zero(7)), end=False)  # noqa: E731
    bad = lambda s: s.send_ram(1, make_batch(None, zero(8)), end=False)  # noqa: E731
    check_edge(Limits(max_runs=8), ok, bad, ErrorCode.LIMIT_EXCEEDED)


@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("max_str_len", lambda n: "s" * n),
        ("max_bin_len", lambda n: b"b" * n),
        ("max_array_len", lambda n: [0] * n),
        ("max_map_len", lambda n: {f"k{i}": 0 for i in range(n)}),
    ],
)
def test_msgpack_lengths(field, make):
    limits = Limits(**{field: 40})
    check_edge(limits, full({"v": make(40)}), full({"v": make(41)}), ErrorCode.LIMIT_EXCEEDED)


def test_max_depth():
    def nested(depth: int):  # containers: the meta map is level 1, "state" 2, lists from 3
        value: object = 0
        for _ in range(depth - 2):
            value = [value]
        return {"v": value}

    check_edge(Limits(max_depth=6), full(nested(6)), full(nested(7)), ErrorCode.LIMIT_EXCEEDED)


@pytest.mark.parametrize(
    ("size", "code"), [(4, ErrorCode.BAD_METADATA), (5, ErrorCode.LIMIT_EXCEEDED)]
)
def test_max_ext_len(size, code):
    """Ext types are refused; beyond max_ext_len they are not even read."""
    limits = Limits(max_ext_len=4)
    _source, prefix = prepared(limits)
    meta = msgpack.packb({**SECTION, "state": {"e": msgpack.ExtType(1, b"x" * size)}})
    frame = encode_frame(2, FrameKind.SECTION_FULL, 2, meta)
    with pytest.raises(RemoteProtocolError) as remote:
        receive(limits, prefix + frame)
    assert code == remote.value.code
    source, _ = prepared(limits)
    with pytest.raises(LocalProtocolError) as local:
        source.send_section_full(2, "serial0", 0, 1, {"e": msgpack.ExtType(1, b"x" * size)})
    assert code == local.value.code


def test_max_config_devices():
    devices = lambda n: [(f"dev{i}", 0, 1) for i in range(n)]  # noqa: E731
    limits = Limits(max_config_devices=5)
    SourceConnection(limits=limits, now=0.0).send_configuration(make_config(devices=devices(5)))
    with pytest.raises(LocalProtocolError) as local:
        SourceConnection(limits=limits, now=0.0).send_configuration(make_config(devices=devices(6)))
    assert ErrorCode.LIMIT_EXCEEDED == local.value.code
    source = SourceConnection(now=0.0)
    source.send_configuration(make_config(devices=devices(6)))
    dest = DestConnection(limits=limits, now=0.0)
    dest.receive_data(sent_bytes(source), 0.0)
    with pytest.raises(RemoteProtocolError, match="max_config_devices") as remote:
        drain(dest)
    assert ErrorCode.LIMIT_EXCEEDED == remote.value.code


def test_max_ram_bytes():
    limits = Limits(max_ram_bytes=16 * PAGE_SIZE)
    SourceConnection(limits=limits, now=0.0).send_configuration(make_config(ram_pages=16))
    with pytest.raises(LocalProtocolError, match="max_ram_bytes") as local:
        SourceConnection(limits=limits, now=0.0).send_configuration(make_config(ram_pages=17))
    assert ErrorCode.LIMIT_EXCEEDED == local.value.code
    source = SourceConnection(now=0.0)
    source.send_configuration(make_config(ram_pages=17))
    dest = DestConnection(limits=limits, now=0.0)
    dest.receive_data(sent_bytes(source), 0.0)
    with pytest.raises(RemoteProtocolError, match="max_ram_bytes"):
        drain(dest)


def test_max_buffered_bytes():
    """Bytes arriving while an event waits are held up to the limit, then refused."""
    limits = Limits(max_buffered_bytes=100)
    pair = ConnectionPair(limits=limits)
    pair.source.send_configuration(make_config())
    stream = sent_bytes(pair.source)
    dest = pair.dest
    dest.receive_data(stream[:8], 0.0)  # StreamStarted waits: paused
    dest.receive_data(stream[8:108], 0.0)  # exactly the limit is held
    dest.receive_data(b"", 0.0)
    assert dest.next_event() is not None
    other = ConnectionPair(limits=limits)
    other.dest.receive_data(stream[:8], 0.0)
    other.dest.receive_data(stream[8:109], 0.0)
    assert other.dest.next_event() is not None  # the event before the failure
    with pytest.raises(RemoteProtocolError, match="max_buffered_bytes") as info:
        other.dest.next_event()
    assert ErrorCode.LIMIT_EXCEEDED == info.value.code


def test_header_sizes_fail_before_buffering():
    """An announced meta_len/data_len beyond the limits fails at the 16-byte header."""
    header = (
        b"LVMG\x00\x02\x00\x00" + bytes([FrameKind.CONFIGURATION, 0, 0, 0]) + (0).to_bytes(4, "big")
    )
    for meta_len, data_len in (((1 << 20) + 1, 0), (10, (16 << 20) + 1)):
        dest = DestConnection(now=0.0)
        dest.receive_data(header + meta_len.to_bytes(4, "big") + data_len.to_bytes(4, "big"), 0.0)
        assert dest.next_event() is not None
        with pytest.raises(RemoteProtocolError, match="exceeds max_meta_bytes") as info:
            dest.next_event()
        assert ErrorCode.FRAME_TOO_LARGE == info.value.code
        assert [] == dest.get_buffers()
