"""Every frame type round-trips: what the source API sends is what the destination reports.

The oracle is the script itself: each call on the source maps to one expected event.
"""

from __future__ import annotations

import numpy as np
from helpers.pair import (
    ConnectionPair,
    N,
    make_config,
    normalize,
    pattern_ram,
    perform,
    received_ram,
    scripts,
)
from hypothesis import given, settings

from protocol import (
    CHANNEL_HANDSHAKE_VERSION,
    AbortReceived,
    ChannelAnnounced,
    ChannelRole,
    ConfigurationReceived,
    DescriptionReceived,
    DestinationResumed,
    DeviceStateReceived,
    ErrorCode,
    HandoverReceived,
    LoadCompleted,
    PingReceived,
    PongReceived,
    RamPagesReceived,
    ReturnPathAcked,
    ReturnPathRequested,
    ReturnStreamStarted,
    SectionPartReceived,
    SectionStarted,
    StreamEnded,
    StreamStarted,
    SwitchoverStarted,
)
from protocol.ram import RUN_DTYPE


def expected_main(script) -> list:
    config = make_config(
        ram_pages=script.ram_pages, page_size=script.page_size, devices=script.devices
    )
    events: list = [StreamStarted(version=script.version)]
    if script.return_path and script.version >= CHANNEL_HANDSHAKE_VERSION:
        events.append(ChannelAnnounced(migration_id=config.migration_id, role=ChannelRole.MAIN))
    events.append(ConfigurationReceived(config=config))
    if script.return_path:
        events.append(ReturnPathRequested())
    simple = {
        "switchover": SwitchoverStarted(),
        "eof": StreamEnded(),
    }
    for name, args in script.steps:
        if name == "start":
            sid, idstr, inst, ver, setup = args
            events.append(
                SectionStarted(
                    section_id=sid, idstr=idstr, instance_id=inst, version_id=ver, setup=setup
                )
            )
        elif name == "full":
            sid, idstr, inst, ver, state = args
            events.append(
                DeviceStateReceived(
                    section_id=sid, idstr=idstr, instance_id=inst, version_id=ver, state=state
                )
            )
        elif name == "ping":
            events.append(PingReceived(value=args[0]))
        elif name == "ram":
            sid, runs, end = args
            normal = sum(c for _f, c, k in runs if k == N)
            zero = sum(c for _f, c, k in runs if k != N)
            table = np.array([(f, c, k, 0) for f, c, k in runs], dtype=RUN_DTYPE)
            events.append(
                RamPagesReceived(
                    section_id=sid, end=end, normal_pages=normal, zero_pages=zero, runs=table
                )
            )
        elif name == "part":
            sid, payload, end = args
            events.append(SectionPartReceived(section_id=sid, end=end, payload=payload))
        elif name == "vmdesc":
            events.append(DescriptionReceived(vmdesc=args[0]))
        else:
            events.append(simple[name])
    if script.finish == "handover":
        events.append(HandoverReceived())
    elif script.finish == "abort":
        events.append(AbortReceived(code=ErrorCode.CANCELLED, reason="migrate_cancel"))
    return events


def expected_return(script) -> list:
    if not script.return_path:
        return []
    events: list = [
        ReturnStreamStarted(version=script.version),
        ReturnPathAcked(version=script.version),
    ]
    events += [PongReceived(value=args[0]) for name, args in script.steps if name == "ping"]
    if script.finish == "handover":
        events += [
            LoadCompleted(digest="d1", normal_pages=1, zero_pages=2, devices=3),
            DestinationResumed(runstate="running"),
        ]
    return events


def expected_ram(script, ram: bytearray) -> bytearray:
    out = bytearray(len(ram))
    size = script.page_size
    for name, args in script.steps:
        if name == "ram":
            for first, count, kind in args[1]:
                span = slice(first * size, (first + count) * size)
                out[span] = ram[span] if kind == N else bytes(count * size)
    return out


@settings(max_examples=60)
@given(scripts())
def test_every_frame_round_trips(script):
    pair = ConnectionPair(version=script.version, return_path=script.return_path)
    ram = pattern_ram(script.ram_pages, script.page_size)
    dest_events, source_events = perform(pair, script, ram)

    received = normalize(dest_events)
    if pair.dest_ram is None:  # no page sink (page size is not vmsim's): data in the events
        received = [(*e[:-1], None) if e[0] == "RamPagesReceived" else e for e in received]
    assert normalize(expected_main(script)) == received
    assert normalize(expected_return(script)) == normalize(source_events)
    received = pair.dest_ram
    if received is None:  # no page sink (the page size is not vmsim's): data in the events
        ram_size = script.ram_pages * script.page_size
        received = received_ram(dest_events, ram_size=ram_size, page_size=script.page_size)
    assert expected_ram(script, ram) == received
    frames = [e.frame for e in dest_events if getattr(e, "frame", None) is not None]
    assert list(range(len(frames))) == [f.index for f in frames]
    offsets = [8] + [f.offset + 32 + f.meta_len + f.data_len for f in frames]
    assert offsets[:-1] == [f.offset for f in frames]
    assert len(pair.main_stream) == offsets[-1]
