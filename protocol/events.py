"""Events: what a connection reports after receiving something, named as past-tense facts.

Each event that stems from a frame carries ``frame`` (its index, offset, kind and sizes).
The destination receives main-stream events; the source receives return-path events; both can
see ``ConnectionClosed`` and ``PeerTimedOut``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    from numpy.typing import NDArray

    from protocol.codec import DecodeJob
    from protocol.codes import ChannelRole, Outcome
    from protocol.config import MigrationConfiguration
    from protocol.errors import ErrorCode, FrameInfo
    from protocol.postcopy import PageRanges


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Base class of all events."""

    holds_reader: ClassVar[bool] = False  # True: the reader waits for the caller's work on it


EventT = TypeVar("EventT", bound=Event)


def with_frame(event: EventT, frame: FrameInfo) -> EventT:
    """The same event with its ``frame`` filled in (events without ``frame`` are returned as is)."""
    if not hasattr(event, "frame"):
        return event
    return cast("EventT", dataclasses.replace(cast("Any", event), frame=frame))


# --------------------------------------------------------------------------- main stream


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamStarted(Event):
    """A valid main-stream header arrived."""

    version: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelAnnounced(Event):
    """CHANNEL: which migration this connection belongs to and what it carries (version 3)."""

    migration_id: str
    role: ChannelRole
    index: int = 0
    checked: bool = True  # False: later frames carry no checksum (`checksum: none`, TLS only)
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfigurationReceived(Event):
    """The CONFIGURATION frame; the app checks it, then attaches guest RAM."""

    config: MigrationConfiguration
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ReturnPathRequested(Event):
    """OPEN_RETURN_PATH: answer with ``send_open_ack()`` once ready."""

    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PingReceived(Event):
    """PING (already answered with PONG when a return path exists)."""

    value: int
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SectionStarted(Event):
    """SECTION_START of an iterable SaveStateEntry."""

    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    setup: Mapping[str, Any]
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SectionPartReceived(Event):
    """SECTION_PART or SECTION_END (``end``) of an iterable section other than RAM."""

    section_id: int
    end: bool
    payload: Mapping[str, Any]
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RamPagesReceived(Event):
    """A RAM PART or END frame, already in guest RAM when RAM is attached.

    ``runs`` is the run table without its EOS record (dtype ``RUN_DTYPE``: ``first_pfn``,
    ``n_pages``, ``kind``). ``data`` is the NORMAL page data in run order, only when no RAM is
    attached (analyzer); otherwise None. ``runs`` and ``data`` do not take part in ``==``.
    """

    section_id: int
    end: bool
    normal_pages: int
    zero_pages: int
    runs: NDArray[np.void] = field(compare=False)
    data: memoryview | None = field(default=None, compare=False)
    frame: FrameInfo | None = None
    xbzrle_pages: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class MultifdPagesReceived(Event):
    """PAGES: a packet of pages on a multifd channel, in guest RAM once its sink made it final.

    ``runs`` and ``data`` are as in `RamPagesReceived` (``data`` only without a sink).
    """

    normal_pages: int
    zero_pages: int
    runs: NDArray[np.void] = field(compare=False)
    data: memoryview | None = field(default=None, compare=False)
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PagesToDecode(Event):
    """PAGES, compressed and verified, on a connection that decodes elsewhere (`defer_decode`).

    Run ``job.run()`` anywhere (pure; zlib and zstd release the GIL, so several channels decode
    in parallel) and give its bytes, or the `LocalProtocolError` it raised, to
    `DestConnection.pages_decoded`, which returns this frame's `MultifdPagesReceived`. The
    connection reads no further frame until then.
    """

    job: DecodeJob = field(compare=False)
    frame: FrameInfo | None = None
    holds_reader: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True, slots=True)
class MultifdSynced(Event):
    """MULTIFD_SYNC: every page this channel carries for passes up to ``pass_number`` came."""

    pass_number: int
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PostcopyAdvised(Event):
    """POSTCOPY_ADVISE: the source may switch this migration to postcopy."""

    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PagesDiscarded(Event):
    """POSTCOPY_RAM_DISCARD: these pages changed since they were sent; they come again."""

    ranges: PageRanges
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PostcopyListening(Event):
    """POSTCOPY_LISTEN: the discards are done; device state follows, then RUN."""

    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PostcopyRunning(Event):
    """POSTCOPY_RUN: run the guest now; the missing pages follow (and may be requested)."""

    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PostcopyResumed(Event):
    """POSTCOPY_RESUME: on a recover channel, the source has the bitmap; the pages follow."""

    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PrecopyResumed(Event):
    """PRECOPY_RESUME: on a recover channel, precopy goes on; RAM PART frames follow."""

    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SwitchoverStarted(Event):
    """SWITCHOVER_START: the source VM is stopped; END and FULL sections follow."""

    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceStateReceived(Event):
    """SECTION_FULL: one device's whole VMState."""

    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    state: Mapping[str, Any]
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamEnded(Event):
    """The EOF frame: all device state has been sent."""

    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DescriptionReceived(Event):
    """VMDESCRIPTION: the trailing device description."""

    vmdesc: Mapping[str, Any]
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class HandoverReceived(Event):
    """HANDOVER: ownership passed to the destination; start the VM and send RESUMED."""

    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AbortReceived(Event):
    """ABORT: the source abandoned the migration; discard what was received."""

    code: ErrorCode
    reason: str
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolveRequested(Event):
    """RESOLVE: answer with ``send_outcome()``."""

    migration_id: str
    frame: FrameInfo | None = None


# --------------------------------------------------------------------------- return path


@dataclass(frozen=True, kw_only=True, slots=True)
class ReturnStreamStarted(Event):
    """A valid return-path header arrived."""

    version: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ReturnPathAcked(Event):
    """OPEN_ACK: the destination accepted the configuration and its RAM is ready."""

    version: int
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PongReceived(Event):
    """PONG answering one of our PINGs; ``rtt_s`` counts from when the PING was queued."""

    value: int
    rtt_s: float = 0.0
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PagesRequested(Event):
    """REQ_PAGES: the destination's guest waits for these pages (postcopy)."""

    ranges: PageRanges
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ReceivedBitmap(Event):
    """RECV_BITMAP: which pages from ``first_pfn`` on the destination holds (bit set: received).

    ``bitmap`` is little-endian bit order: bit ``i % 8`` of byte ``i // 8`` is page
    ``first_pfn + i``. It does not take part in ``==``.
    """

    first_pfn: int
    n_pages: int
    bitmap: bytes = field(compare=False)
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ResumePointReported(Event):
    """RESUME_POINT: the destination loaded the first ``ram_frames`` RAM frames of the stream.

    On a recover channel of a precopy: the frames after these may have been lost or torn, so
    the source sends their pages again (docs/protocol.md 1.11).
    """

    ram_frames: int
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadCompleted(Event):
    """LOADED: everything loaded and checked at the destination."""

    digest: str | None
    normal_pages: int
    zero_pages: int
    devices: int
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DestinationResumed(Event):
    """RESUMED: after HANDOVER, the VM runs (or stays paused) at the destination."""

    runstate: str
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DestinationFailed(Event):
    """FAILED: the destination gave up and discards what it received."""

    code: ErrorCode
    reason: str
    frame: FrameInfo | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class OutcomeReported(Event):
    """OUTCOME: what became of the migration named in RESOLVE."""

    migration_id: str
    outcome: Outcome
    frame: FrameInfo | None = None


# --------------------------------------------------------------------------- both sides


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionClosed(Event):
    """The peer's stream ended between frames; ``clean`` only at a legal end."""

    clean: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerTimedOut(Event):
    """Nothing arrived and no send progress for ``Timeouts.peer_timeout_s``: fail with TIMEOUT."""

    idle_s: float
