"""Every (role, state, input) pair: legal per the table, or the right error naming both.

The tables in ``protocol.states`` are the oracle. For each reachable state the source tries to
*send* each input (LocalProtocolError when illegal) and a destination in the same state
*receives* it as raw bytes (RemoteProtocolError when illegal); both must agree with the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from helpers.pair import PAGE_SIZE, ConnectionPair, make_batch, make_config, sent_bytes

from protocol import (
    PREVIOUS_VERSION,
    PROTOCOL_VERSION,
    ChannelRole,
    ErrorCode,
    FrameKind,
    LocalProtocolError,
    MainState,
    Outcome,
    PageKind,
    RemoteProtocolError,
    ReturnKind,
    ReturnState,
    SourceConnection,
    StreamMode,
)
from protocol.config import encode_configuration
from protocol.frames import encode_frame
from protocol.meta import pack_meta
from protocol.postcopy import pack_ranges
from protocol.ram import pack_runs
from protocol.states import (
    MAIN_TABLE,
    RETURN_REQUIRES_MAIN,
    RETURN_TABLE,
    MainInput,
    ReturnInput,
    main_transition,
    may_ping,
    return_transition,
)

if TYPE_CHECKING:
    from collections.abc import Callable

CONFIG = make_config()
ZERO_PAGE = make_batch(None, [(0, 1, PageKind.ZERO)])
EMPTY = make_batch(None, [])
ONE_RANGE = np.array([1], dtype=np.int64)

SEND: dict[MainInput, Callable[[SourceConnection], None]] = {
    MainInput.CHANNEL_MAIN: lambda s: s.send_channel("mig-0001", ChannelRole.MAIN),
    MainInput.CHANNEL_RESOLVE: lambda s: s.send_channel("mig-0001", ChannelRole.RESOLVE),
    MainInput.CONFIGURATION: lambda s: s.send_configuration(CONFIG),
    MainInput.OPEN_RETURN_PATH: lambda s: s.send_open_return_path(),
    MainInput.PING: lambda s: s.send_ping(5),
    MainInput.SECTION_START: lambda s: s.send_section_start(10, "blk", 0, 1, {}),
    MainInput.SECTION_PART: lambda s: s.send_ram(1, ZERO_PAGE, end=False),
    MainInput.SECTION_END: lambda s: s.send_ram(1, EMPTY, end=True),
    MainInput.SECTION_FULL: lambda s: s.send_section_full(2, "serial0", 0, 1, {"fields": {}}),
    MainInput.SWITCHOVER_START: lambda s: s.send_switchover_start(),
    MainInput.EOF: lambda s: s.send_eof(),
    MainInput.VMDESCRIPTION: lambda s: s.send_vmdesc({"devices": []}),
    MainInput.HANDOVER: lambda s: s.send_handover(),
    MainInput.ABORT: lambda s: s.send_abort(ErrorCode.CANCELLED, "migrate_cancel"),
    MainInput.RESOLVE: lambda s: s.send_resolve("mig-0001"),
    MainInput.CHANNEL_MULTIFD: lambda s: s.open_multifd(CONFIG, 1),
    MainInput.PAGES: lambda s: s.send_pages(ZERO_PAGE),
    MainInput.MULTIFD_SYNC: lambda s: s.send_multifd_sync(1),
    MainInput.POSTCOPY_ADVISE: lambda s: s.send_postcopy_advise(),
    MainInput.POSTCOPY_RAM_DISCARD: lambda s: s.send_postcopy_discard(ONE_RANGE, ONE_RANGE),
    MainInput.POSTCOPY_LISTEN: lambda s: s.send_postcopy_listen(),
    MainInput.POSTCOPY_RUN: lambda s: s.send_postcopy_run(),
    MainInput.CHANNEL_RECOVER: lambda s: s.open_recovery(CONFIG, 1),
    MainInput.POSTCOPY_RESUME: lambda s: s.send_postcopy_resume(),
    MainInput.PRECOPY_RESUME: lambda s: s.send_precopy_resume(),
}

_ram_setup = {"ram_size": CONFIG.ram_size, "page_size": PAGE_SIZE}
_CHANNEL = {"cmd": 0x43, "migration_id": "mig-0001", "index": 0}
FRAMES: dict[MainInput, tuple[FrameKind, int, dict]] = {
    MainInput.CHANNEL_MAIN: (FrameKind.COMMAND, 0, {**_CHANNEL, "role": "main"}),
    MainInput.CHANNEL_RESOLVE: (FrameKind.COMMAND, 0, {**_CHANNEL, "role": "resolve"}),
    MainInput.CONFIGURATION: (FrameKind.CONFIGURATION, 0, encode_configuration(CONFIG)),
    MainInput.OPEN_RETURN_PATH: (FrameKind.COMMAND, 0, {"cmd": 1}),
    MainInput.PING: (FrameKind.COMMAND, 0, {"cmd": 2, "value": 5}),
    MainInput.SECTION_START: (
        FrameKind.SECTION_START,
        10,
        {"idstr": "blk", "instance_id": 0, "version_id": 1, "setup": {}},
    ),
    MainInput.SECTION_PART: (
        FrameKind.SECTION_PART,
        1,
        {"runs": pack_runs(ZERO_PAGE), "eos": True},
    ),
    MainInput.SECTION_END: (FrameKind.SECTION_END, 1, {"runs": pack_runs(EMPTY), "eos": True}),
    MainInput.SECTION_FULL: (
        FrameKind.SECTION_FULL,
        2,
        {"idstr": "serial0", "instance_id": 0, "version_id": 1, "state": {"fields": {}}},
    ),
    MainInput.SWITCHOVER_START: (FrameKind.COMMAND, 0, {"cmd": 11}),
    MainInput.EOF: (FrameKind.EOF, 0, {}),
    MainInput.VMDESCRIPTION: (FrameKind.VMDESCRIPTION, 0, {"vmdesc": {"devices": []}}),
    MainInput.HANDOVER: (FrameKind.COMMAND, 0, {"cmd": 0x40}),
    MainInput.ABORT: (FrameKind.COMMAND, 0, {"cmd": 0x41, "code": 11, "reason": "x"}),
    MainInput.RESOLVE: (FrameKind.COMMAND, 0, {"cmd": 0x42, "migration_id": "mig-0001"}),
    MainInput.CHANNEL_MULTIFD: (FrameKind.COMMAND, 0, {**_CHANNEL, "role": "multifd", "index": 1}),
    MainInput.PAGES: (FrameKind.PAGES, 0, {"runs": pack_runs(ZERO_PAGE), "eos": True}),
    MainInput.MULTIFD_SYNC: (FrameKind.COMMAND, 0, {"cmd": 0x44, "pass": 1}),
    MainInput.POSTCOPY_ADVISE: (FrameKind.COMMAND, 0, {"cmd": 3}),
    MainInput.POSTCOPY_RAM_DISCARD: (
        FrameKind.COMMAND,
        0,
        {"cmd": 6, "ranges": pack_ranges(ONE_RANGE, ONE_RANGE)},
    ),
    MainInput.POSTCOPY_LISTEN: (FrameKind.COMMAND, 0, {"cmd": 4}),
    MainInput.POSTCOPY_RUN: (FrameKind.COMMAND, 0, {"cmd": 5}),
    MainInput.CHANNEL_RECOVER: (FrameKind.COMMAND, 0, {**_CHANNEL, "role": "recover"}),
    MainInput.POSTCOPY_RESUME: (FrameKind.COMMAND, 0, {"cmd": 9}),
    MainInput.PRECOPY_RESUME: (FrameKind.COMMAND, 0, {"cmd": 0x45}),
}

_FILE, _RP, _CH = StreamMode.FILE, StreamMode.RETURN_PATH, StreamMode.CHANNELS
VERSION = {_FILE: PROTOCOL_VERSION, _RP: PREVIOUS_VERSION, _CH: PROTOCOL_VERSION}
PREFIXES: dict[tuple[StreamMode, MainState], list[object]] = {}
for _mode in StreamMode:
    _channel = [MainInput.CHANNEL_MAIN] if _mode is _CH else []
    _open = [MainInput.OPEN_RETURN_PATH] if _mode is not _FILE else []
    _setup = [*_channel, MainInput.CONFIGURATION, *_open, "ram"]
    _done = [*_setup, MainInput.SECTION_PART, MainInput.SWITCHOVER_START, MainInput.SECTION_FULL]
    PREFIXES[(_mode, MainState.IDLE)] = []
    PREFIXES[(_mode, MainState.SETUP)] = _setup
    PREFIXES[(_mode, MainState.ITERATING)] = [*_setup, MainInput.SECTION_PART]
    PREFIXES[(_mode, MainState.SWITCHOVER)] = [*_setup, MainInput.SWITCHOVER_START]
    PREFIXES[(_mode, MainState.FINALIZING)] = _done
    PREFIXES[(_mode, MainState.COMPLETED)] = [*_done, MainInput.EOF]
    _described = MainState.DONE if _mode is _FILE else MainState.DESCRIBED
    PREFIXES[(_mode, _described)] = [*_done, MainInput.EOF, MainInput.VMDESCRIPTION]
    PREFIXES[(_mode, MainState.ABORTED)] = [*_channel, MainInput.CONFIGURATION, MainInput.ABORT]
    if _mode is _FILE:
        continue
    _resolve = [MainInput.CHANNEL_RESOLVE] if _mode is _CH else []
    PREFIXES[(_mode, MainState.CONFIGURED)] = [*_channel, MainInput.CONFIGURATION]
    PREFIXES[(_mode, MainState.HANDED_OVER)] = [*_done, MainInput.EOF, MainInput.VMDESCRIPTION]
    PREFIXES[(_mode, MainState.HANDED_OVER)].append(MainInput.HANDOVER)
    PREFIXES[(_mode, MainState.RESOLVING)] = [*_resolve, MainInput.RESOLVE]
    PREFIXES[(_mode, MainState.RESOLVE_HANDED_OVER)] = [
        *_resolve,
        MainInput.RESOLVE,
        MainInput.HANDOVER,
    ]
PREFIXES[(_CH, MainState.OPENED)] = [MainInput.CHANNEL_MAIN]
PREFIXES[(_CH, MainState.RESOLVE_OPENED)] = [MainInput.CHANNEL_RESOLVE]
PREFIXES[(_CH, MainState.MULTIFD)] = [MainInput.CHANNEL_MULTIFD]
PREFIXES[(_CH, MainState.MULTIFD_DONE)] = [MainInput.CHANNEL_MULTIFD, MainInput.EOF]
_advised = [MainInput.CHANNEL_MAIN, MainInput.CONFIGURATION, MainInput.OPEN_RETURN_PATH]
_advised += [MainInput.POSTCOPY_ADVISE, "ram"]
_listening = [*_advised, MainInput.SECTION_PART, MainInput.POSTCOPY_LISTEN]
_running = [*_listening, MainInput.SECTION_FULL, MainInput.POSTCOPY_RUN]
PREFIXES[(_CH, MainState.ADVISED)] = _advised
PREFIXES[(_CH, MainState.ADVISED_ITERATING)] = [*_advised, MainInput.SECTION_PART]
PREFIXES[(_CH, MainState.POSTCOPY_DISCARD)] = [*_advised, MainInput.POSTCOPY_RAM_DISCARD]
PREFIXES[(_CH, MainState.POSTCOPY_LISTENING)] = _listening
PREFIXES[(_CH, MainState.POSTCOPY_RUNNING)] = _running
PREFIXES[(_CH, MainState.POSTCOPY_ENDING)] = [*_running, MainInput.SECTION_END]
PREFIXES[(_CH, MainState.RECOVER_OPENED)] = [MainInput.CHANNEL_RECOVER]
IMPLIED_CHANNEL = {
    MainInput.CONFIGURATION: MainInput.CHANNEL_MAIN,
    MainInput.RESOLVE: MainInput.CHANNEL_RESOLVE,
}
"""In channels mode, a first CONFIGURATION or RESOLVE sends the CHANNEL handshake it implies."""


def source_in(mode: StreamMode, state: MainState) -> SourceConnection:
    source = SourceConnection(
        version=VERSION[mode], return_path=mode is not _FILE, timeouts=None, now=0.0
    )
    for step in PREFIXES[(mode, state)]:
        if step == "ram":
            source.send_section_start(1, "ram", 0, 4, _ram_setup)
        else:
            SEND[step](source)
    assert state == source.our_state
    return source


def test_every_reachable_state_is_covered():
    """Each main state is reached by a prefix in the mode(s) where it exists."""
    reached = {state for (_mode, state) in PREFIXES}
    for mode, table in MAIN_TABLE.items():
        targets = {after for row in table.values() for after in row.values()} | set(table)
        missing = {s for s in targets if (mode, s) not in PREFIXES} - {MainState.STARTED}
        assert set() == missing, mode
    assert MainState.CLOSED not in reached


CASES = [(mode, state, event) for (mode, state) in PREFIXES for event in SEND]


@pytest.mark.parametrize(("mode", "state", "event"), CASES, ids=lambda v: getattr(v, "value", v))
def test_source_send_matches_table(mode, state, event):
    source = source_in(mode, state)
    effective = MainState.STARTED if state is MainState.IDLE else state
    legal = event in MAIN_TABLE[mode].get(effective, {})
    sent_bytes(source)
    implied = IMPLIED_CHANNEL.get(event) if mode is _CH and effective is MainState.STARTED else None

    if implied is not None:
        SEND[event](source)
        after_channel = main_transition(mode, effective, implied)
        assert main_transition(mode, after_channel, event) == source.our_state
    elif legal:
        SEND[event](source)
        assert main_transition(mode, effective, event) == source.our_state
        assert sent_bytes(source)
    else:
        with pytest.raises(LocalProtocolError) as info:
            SEND[event](source)
        assert ErrorCode.UNEXPECTED_SECTION == info.value.code
        assert event.value in str(info.value)
        assert effective.value in str(info.value)
        assert state == source.our_state  # a refused send changes nothing
        assert b"" == sent_bytes(source)


@pytest.mark.parametrize(("mode", "state", "event"), CASES, ids=lambda v: getattr(v, "value", v))
def test_dest_receive_matches_table(mode, state, event):
    source = source_in(mode, state)
    prefix = sent_bytes(source)
    if state is MainState.IDLE:
        prefix = b"LVMG\x00" + bytes([VERSION[mode]]) + b"\x00\x00"
        state = MainState.STARTED
    pair = ConnectionPair(return_path=mode is not _FILE)
    pair.deliver(pair.dest, prefix)
    assert state == pair.dest.their_state
    if state is MainState.MULTIFD:
        pair.dest.join(CONFIG, None)  # as the router does, before it reads on
    if state is MainState.RECOVER_OPENED:
        pair.dest.resume(CONFIG, None, 1)  # as the router does, before it reads on
    kind, section_id, meta = FRAMES[event]
    frame = encode_frame(2, kind, section_id, pack_meta(meta))
    legal = event in MAIN_TABLE[mode].get(state, {})

    if legal:
        events = pair.deliver(pair.dest, frame)
        assert 1 == len(events)
        assert main_transition(mode, state, event) == pair.dest.their_state
    else:
        with pytest.raises(RemoteProtocolError) as info:
            pair.deliver(pair.dest, frame)
        assert ErrorCode.UNEXPECTED_SECTION == info.value.code
        assert event.value in str(info.value)
        assert state.value in str(info.value)
        assert info.value.frame is not None
        assert max(len(prefix), 8) == info.value.frame.offset
        assert MainState.ERROR == pair.dest.their_state


@pytest.mark.parametrize("state", [MainState.CLOSED, MainState.ERROR])
@pytest.mark.parametrize("mode", list(StreamMode))
def test_closed_and_error_states_take_nothing(mode, state):
    for event in MainInput:
        with pytest.raises(LocalProtocolError, match=state.value):
            main_transition(mode, state, event)


# --------------------------------------------------------------------------- return path

REPLY: dict[ReturnInput, Callable] = {
    ReturnInput.OPEN_ACK: lambda d: d.send_open_ack(),
    ReturnInput.LOADED: lambda d: d.send_loaded(
        digest=None, normal_pages=0, zero_pages=0, devices=0
    ),
    ReturnInput.RESUMED: lambda d: d.send_resumed("running"),
    ReturnInput.FAILED: lambda d: d.send_failed(ErrorCode.LOAD_FAILED, "bad device"),
    ReturnInput.OUTCOME: lambda d: d.send_outcome("mig-0001", Outcome.COMMITTED),
    ReturnInput.REQ_PAGES: lambda d: d.send_req_pages(ONE_RANGE, ONE_RANGE),
    ReturnInput.RECV_BITMAP: lambda d: d.send_recv_bitmap(0, 8, b"\xff"),
    ReturnInput.RESUME_POINT: lambda d: d.send_resume_point(3),
}
REPLY_FRAMES: dict[ReturnInput, tuple[ReturnKind, dict]] = {
    ReturnInput.OPEN_ACK: (ReturnKind.OPEN_ACK, {"version": 2}),
    ReturnInput.PONG: (ReturnKind.PONG, {"value": 5}),
    ReturnInput.LOADED: (
        ReturnKind.LOADED,
        {"digest": None, "normal_pages": 0, "zero_pages": 0, "devices": 0},
    ),
    ReturnInput.RESUMED: (ReturnKind.RESUMED, {"runstate": "running"}),
    ReturnInput.FAILED: (ReturnKind.FAILED, {"code": 10, "reason": "x"}),
    ReturnInput.OUTCOME: (ReturnKind.OUTCOME, {"migration_id": "mig-0001", "outcome": "committed"}),
    ReturnInput.REQ_PAGES: (ReturnKind.REQ_PAGES, {"ranges": pack_ranges(ONE_RANGE, ONE_RANGE)}),
    ReturnInput.RECV_BITMAP: (
        ReturnKind.RECV_BITMAP,
        {"first_pfn": 0, "n_pages": 8, "bitmap": b"\xff"},
    ),
    ReturnInput.RESUME_POINT: (ReturnKind.RESUME_POINT, {"ram_frames": 3}),
}
RETURN_PREFIXES: dict[ReturnState, list[ReturnInput]] = {
    ReturnState.IDLE: [],
    ReturnState.OPEN: [ReturnInput.OPEN_ACK],
    ReturnState.LOADED: [ReturnInput.OPEN_ACK, ReturnInput.LOADED],
    ReturnState.RESOLVED: [ReturnInput.OUTCOME],
    ReturnState.RESUMED: [ReturnInput.OPEN_ACK, ReturnInput.RESUMED],
    ReturnState.FAILED: [ReturnInput.FAILED],
}
MAIN_CONTEXTS = [
    (mode, state)
    for mode in (_RP, _CH)
    for state in (
        MainState.CONFIGURED,
        MainState.SETUP,
        MainState.COMPLETED,
        MainState.DESCRIBED,
        MainState.HANDED_OVER,
        MainState.ABORTED,
        MainState.RESOLVING,
        MainState.RESOLVE_HANDED_OVER,
    )
] + [
    (_CH, MainState.OPENED),
    (_CH, MainState.RESOLVE_OPENED),
    (_CH, MainState.POSTCOPY_RUNNING),
    (_CH, MainState.POSTCOPY_ENDING),
    (_CH, MainState.RECOVER_OPENED),
]


def _allowed(state: ReturnState, event: ReturnInput, main: MainState) -> bool:
    """The oracle: the table, plus OUTCOME only on a resolve connection (the ABORTED context
    here is a normal migration's)."""
    if event is ReturnInput.OUTCOME and main is MainState.ABORTED:
        return False
    return event in RETURN_TABLE.get(state, {}) and main in RETURN_REQUIRES_MAIN[event]


def _legal_path(main: MainState, steps: list[ReturnInput]) -> bool:
    state = ReturnState.STARTED
    for step in steps:
        if not _allowed(state, step, main):
            return False
        state = return_transition(state, step, main)
    return True


RETURN_CASES = [
    (mode, main, ret, event)
    for mode, main in MAIN_CONTEXTS
    for ret, steps in RETURN_PREFIXES.items()
    if _legal_path(main, steps)
    for event in ReturnInput
    if event is not ReturnInput.HEADER
]


def _return_pair(mode: StreamMode, main: MainState, ret: ReturnState) -> ConnectionPair:
    pair = ConnectionPair(version=VERSION[mode])
    source = source_in(mode, main)
    pair.source = source
    pair.deliver(pair.dest, sent_bytes(source))
    pair.dest.next_event()
    if main is MainState.RECOVER_OPENED:
        pair.dest.resume(CONFIG, None, 1)
    for step in RETURN_PREFIXES[ret]:
        REPLY[step](pair.dest)
    pair.to_source()
    if may_ping(mode, source.our_state):
        source.send_ping(5)  # in flight: its PONG may come
        pair.drop()
    return pair


@pytest.mark.parametrize(
    ("mode", "main", "ret", "event"), RETURN_CASES, ids=lambda v: getattr(v, "value", v)
)
def test_return_path_matches_table(mode, main, ret, event):
    """The destination's sends and the source's receives both follow RETURN_TABLE."""
    pair = _return_pair(mode, main, ret)
    current = pair.dest.our_state
    mirrored = ReturnState.STARTED if ret is ReturnState.IDLE else ret
    assert ret == current or (ret is ReturnState.IDLE and current is ReturnState.STARTED)
    # a PONG may already have opened the return path (IDLE -> STARTED)
    effective = ReturnState.STARTED if current is ReturnState.IDLE else current
    main_now = pair.dest.their_state
    legal = _allowed(effective, event, main_now)

    if event is not ReturnInput.PONG:
        if legal:
            REPLY[event](pair.dest)
            assert return_transition(effective, event, main_now) == pair.dest.our_state
        else:
            with pytest.raises(LocalProtocolError) as info:
                REPLY[event](pair.dest)
            assert ErrorCode.UNEXPECTED_SECTION == info.value.code
            assert event.value in str(info.value)
    kind, meta = REPLY_FRAMES[event]
    if event is ReturnInput.OPEN_ACK:
        meta = {"version": VERSION[mode]}
    frame = encode_frame(2, kind, 0, pack_meta(meta))
    if pair.source.their_state is ReturnState.IDLE:
        frame = b"LVRP\x00" + bytes([VERSION[mode]]) + b"\x00\x00" + frame
    source_main = pair.source.our_state
    source_legal = _allowed(mirrored, event, source_main)
    if source_legal and event is ReturnInput.PONG and not may_ping(mode, main):
        with pytest.raises(RemoteProtocolError, match="answers no PING") as remote:
            pair.deliver(pair.source, frame)
        assert ErrorCode.PROTOCOL_ERROR == remote.value.code
    elif source_legal:
        events = pair.deliver(pair.source, frame)
        assert events
        assert return_transition(mirrored, event, source_main) == pair.source.their_state
    else:
        with pytest.raises(RemoteProtocolError) as remote:
            pair.deliver(pair.source, frame)
        assert ErrorCode.UNEXPECTED_SECTION == remote.value.code
        assert event.value in str(remote.value)
