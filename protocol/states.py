"""The state machines of both streams, as tables. Everything that decides legality lives here.

Theory of operation (h11's two rules):

1. Every transition of the main stream and of the return path is in the tables below; no other
   module decides what frame may follow what.
2. The tables do not know which role uses them. The source checks what it *sends* on the main
   stream and what it *receives* on the return path against them; the destination does the
   opposite. A refused send raises ``LocalProtocolError``, a refused receive becomes
   ``RemoteProtocolError`` (both ``UNEXPECTED_SECTION``, naming the state and the frame).

The main table depends on the stream mode: a file stream (``file:`` URI, the analyzer) has no
return path, so no OPEN_RETURN_PATH, PING, HANDOVER or RESOLVE; a network stream of version 3
opens with a CHANNEL handshake naming its migration and role (``channels`` mode), one of an older
version does not (``return-path`` mode). Return-path frames also depend
on the main stream (``RETURN_REQUIRES_MAIN``): e.g. RESUMED only after HANDOVER. Those conditions
hold on both sides because a reply is always sent after what it answers was received.
"""

from __future__ import annotations

import enum
from typing import Final

from protocol.codes import CHANNEL_HANDSHAKE_VERSION
from protocol.errors import ErrorCode, LocalProtocolError


class StreamMode(enum.Enum):
    """A file (no return path), or a network connection with or without the CHANNEL handshake."""

    FILE = "file"
    RETURN_PATH = "return-path"  # versions 1 and 2 over a network: no CHANNEL handshake
    CHANNELS = "channels"  # version 3 and later over a network: CHANNEL first


def stream_mode(*, return_path: bool, version: int) -> StreamMode:
    """The mode of a stream of ``version``: a file, or a network stream of that version."""
    if not return_path:
        return StreamMode.FILE
    return StreamMode.CHANNELS if version >= CHANNEL_HANDSHAKE_VERSION else StreamMode.RETURN_PATH


class MainState(enum.Enum):
    """States of the main stream (source to destination)."""

    IDLE = "IDLE"  # nothing yet
    STARTED = "STARTED"  # stream header
    OPENED = "OPENED"  # channels mode: CHANNEL main, waiting for the configuration
    RESOLVE_OPENED = "RESOLVE_OPENED"  # channels mode: CHANNEL resolve, waiting for RESOLVE
    MULTIFD = "MULTIFD"  # channels mode: CHANNEL multifd (or preempt), PAGES and MULTIFD_SYNC
    # until EOF (a preempt channel sends no MULTIFD_SYNC)
    MULTIFD_DONE = "MULTIFD_DONE"  # a multifd channel after its EOF
    ADVISED = "ADVISED"  # SETUP after POSTCOPY_ADVISE: this migration may switch to postcopy
    ADVISED_ITERATING = "ADVISED_ITERATING"  # ITERATING after POSTCOPY_ADVISE
    POSTCOPY_DISCARD = "POSTCOPY_DISCARD"  # postcopy: POSTCOPY_RAM_DISCARD commands
    RECOVER_OPENED = "RECOVER_OPENED"  # CHANNEL recover: RECV_BITMAP or RESUME_POINT back, then
    # POSTCOPY_RESUME or PRECOPY_RESUME
    POSTCOPY_LISTENING = "POSTCOPY_LISTENING"  # after POSTCOPY_LISTEN: device state (FULL)
    POSTCOPY_RUNNING = "POSTCOPY_RUNNING"  # after POSTCOPY_RUN: RAM PART sections
    POSTCOPY_ENDING = "POSTCOPY_ENDING"  # postcopy: END sections, then EOF
    CONFIGURED = "CONFIGURED"  # configuration, waiting for OPEN_RETURN_PATH (return-path mode)
    SETUP = "SETUP"  # START and early FULL sections
    ITERATING = "ITERATING"  # PART sections
    SWITCHOVER = "SWITCHOVER"  # after SWITCHOVER_START: END sections
    FINALIZING = "FINALIZING"  # FULL sections of the non-iterable devices
    COMPLETED = "COMPLETED"  # after EOF
    DESCRIBED = "DESCRIBED"  # after VMDESCRIPTION, waiting for HANDOVER or ABORT
    DONE = "DONE"  # file mode: after VMDESCRIPTION
    HANDED_OVER = "HANDED_OVER"
    ABORTED = "ABORTED"
    RESOLVING = "RESOLVING"  # a resolve connection after RESOLVE
    RESOLVE_HANDED_OVER = "RESOLVE_HANDED_OVER"  # HANDOVER on a resolve connection
    CLOSED = "CLOSED"  # the stream ended
    ERROR = "ERROR"  # the stream broke the protocol


class MainInput(enum.Enum):
    """Inputs of the main-stream table: the header, frame kinds and commands."""

    HEADER = "HEADER"
    CHANNEL_MAIN = "CHANNEL_MAIN"
    CHANNEL_RESOLVE = "CHANNEL_RESOLVE"
    CHANNEL_MULTIFD = "CHANNEL_MULTIFD"
    CHANNEL_RECOVER = "CHANNEL_RECOVER"
    CHANNEL_PREEMPT = "CHANNEL_PREEMPT"
    POSTCOPY_RESUME = "POSTCOPY_RESUME"
    PRECOPY_RESUME = "PRECOPY_RESUME"
    PAGES = "PAGES"
    MULTIFD_SYNC = "MULTIFD_SYNC"
    POSTCOPY_ADVISE = "POSTCOPY_ADVISE"
    POSTCOPY_RAM_DISCARD = "POSTCOPY_RAM_DISCARD"
    POSTCOPY_LISTEN = "POSTCOPY_LISTEN"
    POSTCOPY_RUN = "POSTCOPY_RUN"
    CONFIGURATION = "CONFIGURATION"
    OPEN_RETURN_PATH = "OPEN_RETURN_PATH"
    PING = "PING"
    SECTION_START = "SECTION_START"
    SECTION_PART = "SECTION_PART"
    SECTION_END = "SECTION_END"
    SECTION_FULL = "SECTION_FULL"
    SWITCHOVER_START = "SWITCHOVER_START"
    EOF = "EOF"
    VMDESCRIPTION = "VMDESCRIPTION"
    HANDOVER = "HANDOVER"
    ABORT = "ABORT"
    RESOLVE = "RESOLVE"


class ReturnState(enum.Enum):
    """States of the return path (destination to source)."""

    IDLE = "IDLE"
    STARTED = "STARTED"
    OPEN = "OPEN"  # after OPEN_ACK
    LOADED = "LOADED"
    RESOLVED = "RESOLVED"  # after OUTCOME
    RESUMED = "RESUMED"
    FAILED = "FAILED"
    CLOSED = "CLOSED"
    ERROR = "ERROR"


class ReturnInput(enum.Enum):
    """Inputs of the return-path table."""

    HEADER = "HEADER"
    OPEN_ACK = "OPEN_ACK"
    PONG = "PONG"
    REQ_PAGES = "REQ_PAGES"
    RECV_BITMAP = "RECV_BITMAP"
    RESUME_POINT = "RESUME_POINT"
    LOADED = "LOADED"
    RESUMED = "RESUMED"
    FAILED = "FAILED"
    OUTCOME = "OUTCOME"


_S = MainState
_I = MainInput

_FILE_TABLE: Final[dict[MainState, dict[MainInput, MainState]]] = {
    _S.IDLE: {_I.HEADER: _S.STARTED},
    _S.STARTED: {_I.CONFIGURATION: _S.SETUP, _I.ABORT: _S.ABORTED},
    _S.SETUP: {
        _I.SECTION_START: _S.SETUP,
        _I.SECTION_FULL: _S.SETUP,
        _I.SECTION_PART: _S.ITERATING,
        _I.SWITCHOVER_START: _S.SWITCHOVER,
        _I.ABORT: _S.ABORTED,
    },
    _S.ITERATING: {
        _I.SECTION_PART: _S.ITERATING,
        _I.SWITCHOVER_START: _S.SWITCHOVER,
        _I.ABORT: _S.ABORTED,
    },
    _S.SWITCHOVER: {
        _I.SECTION_END: _S.SWITCHOVER,
        _I.SECTION_FULL: _S.FINALIZING,
        _I.EOF: _S.COMPLETED,
        _I.ABORT: _S.ABORTED,
    },
    _S.FINALIZING: {_I.SECTION_FULL: _S.FINALIZING, _I.EOF: _S.COMPLETED, _I.ABORT: _S.ABORTED},
    _S.COMPLETED: {_I.VMDESCRIPTION: _S.DONE, _I.ABORT: _S.ABORTED},
}

_PING_STATES: Final = (
    _S.SETUP,
    _S.ITERATING,
    _S.SWITCHOVER,
    _S.FINALIZING,
    _S.COMPLETED,
    _S.DESCRIBED,
    _S.RESOLVING,
)
_POSTCOPY_STATES: Final = (
    _S.ADVISED,
    _S.ADVISED_ITERATING,
    _S.POSTCOPY_DISCARD,
    _S.POSTCOPY_LISTENING,
    _S.POSTCOPY_RUNNING,
    _S.POSTCOPY_ENDING,
    _S.RECOVER_OPENED,
)


def _return_path_table() -> dict[MainState, dict[MainInput, MainState]]:
    table = {state: dict(row) for state, row in _FILE_TABLE.items()}
    table[_S.STARTED] = {
        _I.CONFIGURATION: _S.CONFIGURED,
        _I.RESOLVE: _S.RESOLVING,
        _I.ABORT: _S.ABORTED,
    }
    table[_S.CONFIGURED] = {_I.OPEN_RETURN_PATH: _S.SETUP, _I.ABORT: _S.ABORTED}
    table[_S.COMPLETED] = {_I.VMDESCRIPTION: _S.DESCRIBED, _I.ABORT: _S.ABORTED}
    table[_S.DESCRIBED] = {_I.HANDOVER: _S.HANDED_OVER, _I.ABORT: _S.ABORTED}
    table[_S.RESOLVING] = {_I.HANDOVER: _S.RESOLVE_HANDED_OVER, _I.ABORT: _S.ABORTED}
    for state in _PING_STATES:
        table[state][_I.PING] = state
    return table


def _channels_table() -> dict[MainState, dict[MainInput, MainState]]:
    table = _return_path_table()
    table[_S.STARTED] = {
        _I.CHANNEL_MAIN: _S.OPENED,
        _I.CHANNEL_RESOLVE: _S.RESOLVE_OPENED,
        _I.CHANNEL_MULTIFD: _S.MULTIFD,
        _I.ABORT: _S.ABORTED,
    }
    table[_S.OPENED] = {_I.CONFIGURATION: _S.CONFIGURED, _I.ABORT: _S.ABORTED}
    table[_S.RESOLVE_OPENED] = {_I.RESOLVE: _S.RESOLVING, _I.ABORT: _S.ABORTED}
    table[_S.MULTIFD] = {_I.PAGES: _S.MULTIFD, _I.MULTIFD_SYNC: _S.MULTIFD, _I.EOF: _S.MULTIFD_DONE}
    _add_postcopy(table)
    return table


def _add_postcopy(table: dict[MainState, dict[MainInput, MainState]]) -> None:
    """Postcopy (docs/protocol.md 1.10): ADVISE at setup, then the switch, or a precopy end.

    After POSTCOPY_ADVISE, SETUP and ITERATING have advised twins that also take the switch:
    DISCARD* LISTEN FULL* RUN; then PART* END+ EOF, with no ABORT after RUN (the destination's
    guest may have run, so the source can no longer take the VM back).
    """
    advised = {_S.SETUP: _S.ADVISED, _S.ITERATING: _S.ADVISED_ITERATING}
    for plain, twin in advised.items():
        table[twin] = {event: advised.get(after, after) for event, after in table[plain].items()}
    table[_S.SETUP][_I.POSTCOPY_ADVISE] = _S.ADVISED
    for state in (_S.ADVISED, _S.ADVISED_ITERATING, _S.POSTCOPY_DISCARD):
        table.setdefault(state, {})
        table[state][_I.POSTCOPY_RAM_DISCARD] = _S.POSTCOPY_DISCARD
        table[state][_I.POSTCOPY_LISTEN] = _S.POSTCOPY_LISTENING
    table[_S.POSTCOPY_DISCARD][_I.ABORT] = _S.ABORTED
    table[_S.POSTCOPY_LISTENING] = {
        _I.SECTION_FULL: _S.POSTCOPY_LISTENING,
        _I.POSTCOPY_RUN: _S.POSTCOPY_RUNNING,
        _I.ABORT: _S.ABORTED,
    }
    table[_S.POSTCOPY_RUNNING] = {
        _I.SECTION_PART: _S.POSTCOPY_RUNNING,
        _I.SECTION_END: _S.POSTCOPY_ENDING,
    }
    table[_S.POSTCOPY_ENDING] = {_I.SECTION_END: _S.POSTCOPY_ENDING, _I.EOF: _S.COMPLETED}
    table[_S.STARTED][_I.CHANNEL_RECOVER] = _S.RECOVER_OPENED
    table[_S.STARTED][_I.CHANNEL_PREEMPT] = _S.MULTIFD  # requested pages: PAGES*, EOF
    # precopy resume (1.11): ITERATING, or ADVISED_ITERATING for a migration advised for postcopy
    table[_S.RECOVER_OPENED] = {
        _I.POSTCOPY_RESUME: _S.POSTCOPY_RUNNING,
        _I.PRECOPY_RESUME: _S.ITERATING,
    }
    for state in _POSTCOPY_STATES:
        table[state][_I.PING] = state


MAIN_TABLE: Final[dict[StreamMode, dict[MainState, dict[MainInput, MainState]]]] = {
    StreamMode.FILE: _FILE_TABLE,
    StreamMode.RETURN_PATH: _return_path_table(),
    StreamMode.CHANNELS: _channels_table(),
}
"""``MAIN_TABLE[mode][state][input]`` is the next state; a missing entry is illegal."""

_R = ReturnState
_RI = ReturnInput

RETURN_TABLE: Final[dict[ReturnState, dict[ReturnInput, ReturnState]]] = {
    _R.IDLE: {_RI.HEADER: _R.STARTED},
    _R.STARTED: {
        _RI.OPEN_ACK: _R.OPEN,
        _RI.RECV_BITMAP: _R.OPEN,
        _RI.RESUME_POINT: _R.OPEN,
        _RI.OUTCOME: _R.RESOLVED,
        _RI.PONG: _R.STARTED,
        _RI.FAILED: _R.FAILED,
    },
    _R.OPEN: {
        _RI.PONG: _R.OPEN,
        _RI.REQ_PAGES: _R.OPEN,
        _RI.RECV_BITMAP: _R.OPEN,
        _RI.LOADED: _R.LOADED,
        _RI.RESUMED: _R.RESUMED,
        _RI.FAILED: _R.FAILED,
    },
    _R.LOADED: {_RI.PONG: _R.LOADED, _RI.RESUMED: _R.RESUMED, _RI.FAILED: _R.FAILED},
    _R.RESOLVED: {_RI.PONG: _R.RESOLVED, _RI.RESUMED: _R.RESUMED, _RI.FAILED: _R.FAILED},
}
"""``RETURN_TABLE[state][input]`` is the next state; a missing entry is illegal."""

_AFTER_OPEN_RETURN_PATH: Final = frozenset(
    {
        _S.SETUP,
        _S.ITERATING,
        _S.SWITCHOVER,
        _S.FINALIZING,
        _S.COMPLETED,
        _S.DESCRIBED,
        _S.HANDED_OVER,
        _S.ABORTED,
    }
)

RETURN_REQUIRES_MAIN: Final[dict[ReturnInput, frozenset[MainState]]] = {
    _RI.HEADER: frozenset(MainState),
    _RI.FAILED: frozenset(MainState),
    _RI.OPEN_ACK: _AFTER_OPEN_RETURN_PATH | frozenset(_POSTCOPY_STATES),
    _RI.PONG: _AFTER_OPEN_RETURN_PATH
    | frozenset(_POSTCOPY_STATES)
    | {_S.RESOLVING, _S.RESOLVE_HANDED_OVER},
    _RI.REQ_PAGES: frozenset(
        {_S.RECOVER_OPENED, _S.POSTCOPY_RUNNING, _S.POSTCOPY_ENDING, _S.COMPLETED, _S.DESCRIBED}
    ),
    _RI.RECV_BITMAP: frozenset({_S.RECOVER_OPENED}),
    _RI.RESUME_POINT: frozenset({_S.RECOVER_OPENED}),
    _RI.LOADED: frozenset({_S.COMPLETED, _S.DESCRIBED, _S.HANDED_OVER, _S.ABORTED}),
    _RI.RESUMED: frozenset({_S.HANDED_OVER, _S.RESOLVE_HANDED_OVER}),
    _RI.OUTCOME: frozenset({_S.RESOLVING, _S.RESOLVE_HANDED_OVER, _S.ABORTED}),
}
"""Main-stream states in which a return-path input is legal (ABORTED: replies may cross it)."""

MAIN_END_STATES: Final[dict[StreamMode, frozenset[MainState]]] = {
    StreamMode.FILE: frozenset({_S.COMPLETED, _S.DONE, _S.ABORTED}),
    StreamMode.RETURN_PATH: frozenset({_S.HANDED_OVER, _S.RESOLVE_HANDED_OVER, _S.ABORTED}),
    StreamMode.CHANNELS: frozenset(
        {_S.HANDED_OVER, _S.RESOLVE_HANDED_OVER, _S.ABORTED, _S.MULTIFD_DONE}
    ),
}
"""Main-stream states at which the source may close the stream (a file may omit VMDESCRIPTION)."""

RETURN_END_STATES: Final = frozenset({_R.RESUMED, _R.FAILED, _R.RESOLVED})
"""Return-path states at which the destination may close the connection."""


def main_transition(mode: StreamMode, state: MainState, event: MainInput) -> MainState:
    """The main-stream state after ``event``.

    Raises:
        LocalProtocolError: UNEXPECTED_SECTION naming the state and the input.
    """
    try:
        return MAIN_TABLE[mode][state][event]
    except KeyError:
        msg = f"{event.value} is illegal in main-stream state {state.value} ({mode.value} mode)"
        raise LocalProtocolError(msg, code=ErrorCode.UNEXPECTED_SECTION) from None


def return_transition(state: ReturnState, event: ReturnInput, main: MainState) -> ReturnState:
    """The return-path state after ``event``, given the main stream's state.

    Raises:
        LocalProtocolError: UNEXPECTED_SECTION naming the state(s) and the input.
    """
    try:
        after = RETURN_TABLE[state][event]
    except KeyError:
        msg = f"{event.value} is illegal in return-path state {state.value}"
        raise LocalProtocolError(msg, code=ErrorCode.UNEXPECTED_SECTION) from None
    if main not in RETURN_REQUIRES_MAIN[event]:
        msg = f"{event.value} is illegal while the main stream is in state {main.value}"
        raise LocalProtocolError(msg, code=ErrorCode.UNEXPECTED_SECTION)
    return after


def is_main_terminal(mode: StreamMode, state: MainState) -> bool:
    """No input is legal any more (the end, an error or a close)."""
    return not MAIN_TABLE[mode].get(state)


def is_return_terminal(state: ReturnState) -> bool:
    """No return-path input is legal any more."""
    return not RETURN_TABLE.get(state)


def may_ping(mode: StreamMode, state: MainState) -> bool:
    """Whether PING is legal now (the source's timer only pings then)."""
    return MainInput.PING in MAIN_TABLE[mode].get(state, {})


def dest_close_is_clean(mode: StreamMode, main: MainState, sent: ReturnState) -> bool:
    """The main stream ended at a legal end, or we already sent our final reply."""
    return main in MAIN_END_STATES[mode] or sent in RETURN_END_STATES


def source_close_is_clean(sent: MainState, received: ReturnState) -> bool:
    """The return path ended after the destination's final reply, or after our ABORT."""
    if received is ReturnState.RESOLVED:
        return sent is MainState.RESOLVING
    return received in {ReturnState.RESUMED, ReturnState.FAILED} or sent is MainState.ABORTED


def render_markdown() -> str:
    """The tables as Markdown, for docs/protocol.md (a test keeps the two identical)."""
    lines: list[str] = []
    for mode in StreamMode:
        lines += [
            f"Main stream, {mode.value} mode:",
            "",
            "| state | input: next state |",
            "|---|---|",
        ]
        for state, row in MAIN_TABLE[mode].items():
            cells = ", ".join(f"{event.value}: {after.value}" for event, after in row.items())
            lines.append(f"| {state.value} | {cells} |")
        ends = ", ".join(sorted(state.value for state in MAIN_END_STATES[mode]))
        lines += ["", f"A close is clean in main-stream states: {ends}.", ""]
    lines += ["Return path:", "", "| state | input: next state |", "|---|---|"]
    for return_state, returns in RETURN_TABLE.items():
        cells = ", ".join(f"{event.value}: {after.value}" for event, after in returns.items())
        lines.append(f"| {return_state.value} | {cells} |")
    lines += ["", "| return-path input | legal while the main stream is in |", "|---|---|"]
    for event, states in RETURN_REQUIRES_MAIN.items():
        names = (
            "any state"
            if states == frozenset(MainState)
            else ", ".join(s.value for s in MainState if s in states)
        )
        lines.append(f"| {event.value} | {names} |")
    return "\n".join(lines)
