"""livemig's sans-IO migration protocol (docs/protocol.md).

Bytes and ``now`` in; events, bytes to send and the next deadline out. No I/O, no clock, no
logging: ``netio`` moves the bytes and ``vmm`` acts on the events.
"""

from __future__ import annotations

from protocol.analyze import analyze_stream
from protocol.codes import (
    CHANNEL_HANDSHAKE_VERSION,
    CRC32_VERSION,
    MAIN_MAGIC,
    PREVIOUS_VERSION,
    PROTOCOL_VERSION,
    RETURN_MAGIC,
    SUPPORTED_VERSIONS,
    ChannelRole,
    Command,
    FrameKind,
    Outcome,
    PageKind,
    ReturnKind,
)
from protocol.config import DeviceRef, MigrationConfiguration
from protocol.dest import DestConnection
from protocol.errors import (
    ErrorCode,
    FrameInfo,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from protocol.events import (
    AbortReceived,
    ChannelAnnounced,
    ConfigurationReceived,
    ConnectionClosed,
    DescriptionReceived,
    DestinationFailed,
    DestinationResumed,
    DeviceStateReceived,
    Event,
    HandoverReceived,
    LoadCompleted,
    OutcomeReported,
    PeerTimedOut,
    PingReceived,
    PongReceived,
    RamPagesReceived,
    ResolveRequested,
    ReturnPathAcked,
    ReturnPathRequested,
    ReturnStreamStarted,
    SectionPartReceived,
    SectionStarted,
    StreamEnded,
    StreamStarted,
    SwitchoverStarted,
)
from protocol.limits import Limits, Timeouts
from protocol.ram import RUN_DTYPE, PageSink, RamBatchLike, RunTable
from protocol.source import SourceConnection
from protocol.states import MainState, ReturnState, StreamMode

__all__ = [
    "CHANNEL_HANDSHAKE_VERSION",
    "CRC32_VERSION",
    "MAIN_MAGIC",
    "PREVIOUS_VERSION",
    "PROTOCOL_VERSION",
    "RETURN_MAGIC",
    "RUN_DTYPE",
    "SUPPORTED_VERSIONS",
    "AbortReceived",
    "ChannelAnnounced",
    "ChannelRole",
    "Command",
    "ConfigurationReceived",
    "ConnectionClosed",
    "DescriptionReceived",
    "DestConnection",
    "DestinationFailed",
    "DestinationResumed",
    "DeviceRef",
    "DeviceStateReceived",
    "ErrorCode",
    "Event",
    "FrameInfo",
    "FrameKind",
    "HandoverReceived",
    "Limits",
    "LoadCompleted",
    "LocalProtocolError",
    "MainState",
    "MigrationConfiguration",
    "Outcome",
    "OutcomeReported",
    "PageKind",
    "PageSink",
    "PeerTimedOut",
    "PingReceived",
    "PongReceived",
    "ProtocolError",
    "RamBatchLike",
    "RamPagesReceived",
    "RemoteProtocolError",
    "ResolveRequested",
    "ReturnKind",
    "ReturnPathAcked",
    "ReturnPathRequested",
    "ReturnState",
    "ReturnStreamStarted",
    "RunTable",
    "SectionPartReceived",
    "SectionStarted",
    "SourceConnection",
    "StreamEnded",
    "StreamMode",
    "StreamStarted",
    "SwitchoverStarted",
    "Timeouts",
    "analyze_stream",
]
