"""ConnectionPair: a SourceConnection and a DestConnection joined by an in-memory link.

Modelled on h11's ``ConnectionPair`` and aioquic's ``transfer``/``roundtrip``/``drop``. Bytes
move through the real I/O contract: ``data_to_send``/``data_sent`` on the sender, and either
``receive_data`` in pieces of ``split`` bytes or ``get_buffers``/``buffers_filled`` with fill
sizes drawn from ``fill_sizes`` on the receiver. Everything sent is also recorded
(``main_stream``, ``return_stream``) for vectors, corruption and truncation tests.

Also here: small builders (a configuration, a page batch, a scripted migration) shared by the
protocol tests.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from hypothesis import strategies as st

from protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    AbortReceived,
    ChannelAnnounced,
    ConfigurationReceived,
    ConnectionClosed,
    DescriptionReceived,
    DestConnection,
    DestinationFailed,
    DestinationResumed,
    DeviceRef,
    DeviceStateReceived,
    Event,
    HandoverReceived,
    Limits,
    LoadCompleted,
    LocalProtocolError,
    MigrationConfiguration,
    OutcomeReported,
    PageKind,
    PagesDiscarded,
    PagesRequested,
    PingReceived,
    PongReceived,
    PostcopyAdvised,
    PostcopyListening,
    PostcopyRunning,
    RamPagesReceived,
    ResolveRequested,
    ReturnPathAcked,
    ReturnPathRequested,
    ReturnStreamStarted,
    SectionPartReceived,
    SectionStarted,
    SourceConnection,
    StreamEnded,
    StreamStarted,
    SwitchoverStarted,
    Timeouts,
)
from vmsim import PAGE_SIZE as VMSIM_PAGE_SIZE
from vmsim import GuestRam, RamLoader

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from numpy.typing import NDArray

    from protocol.ram import RunTable

PAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Batch:
    """A page batch (the shape of vmsim's PageBatch, i.e. ``RamBatchLike``)."""

    first_pfns: NDArray[np.uint32]
    n_pages: NDArray[np.uint16]
    kinds: NDArray[np.uint8]
    data: tuple[memoryview, ...] = ()
    delta_lens: NDArray[np.int64] | None = None


def make_batch(
    ram: memoryview | bytearray | None,
    runs: Sequence[tuple[int, int, int]],
    page_size: int = PAGE_SIZE,
) -> Batch:
    """A batch of ``(first_pfn, n_pages, kind)`` runs; NORMAL data are views of ``ram``."""
    view = memoryview(ram) if ram is not None else None
    data = tuple(
        view[first * page_size : (first + count) * page_size]
        for first, count, kind in runs
        if kind == PageKind.NORMAL and view is not None
    )
    return Batch(
        first_pfns=np.array([r[0] for r in runs], dtype=np.uint32),
        n_pages=np.array([r[1] for r in runs], dtype=np.uint16),
        kinds=np.array([r[2] for r in runs], dtype=np.uint8),
        data=data,
    )


def make_config(
    *,
    ram_pages: int = 16,
    page_size: int = PAGE_SIZE,
    devices: Sequence[tuple[str, int, int]] = (("serial0", 0, 1), ("cpu", 0, 2)),
    migration_id: str = "mig-0001",
    capabilities: Sequence[str] = (),
    uuid: str | None = None,
) -> MigrationConfiguration:
    """A small valid configuration."""
    return MigrationConfiguration(
        migration_id=migration_id,
        machine="livemig-virt-1.0",
        page_size=page_size,
        ram_size=ram_pages * page_size,
        devices=tuple(DeviceRef(idstr=i, instance_id=n, version_id=v) for i, n, v in devices),
        capabilities=tuple(capabilities),
        uuid=uuid,
        vm={"vcpus": 1, "seed": 7, "workload": "ab"},
    )


def pattern_ram(pages: int, page_size: int = PAGE_SIZE, seed: int = 1) -> bytearray:
    """Deterministic, version-independent page contents (page i differs from page j)."""
    index = np.arange(pages * page_size, dtype=np.uint64)
    values = (index * 2654435761 + seed * 97 + (index >> 12) * 7919) % 251
    return bytearray(values.astype(np.uint8).tobytes())


class BytesRam:
    """A page sink over a bytearray (the vectors' 1 KiB pages by default): what a test joins a
    multifd channel with when the connection must place pages itself."""

    def __init__(self, n_pages: int, page_size: int = 1024) -> None:
        self.page_size = page_size
        self.mem = bytearray(n_pages * page_size)
        self.loaded = 0

    def _spans(self, runs: RunTable) -> list[tuple[int, int, bool]]:
        columns = (runs.first_pfn.tolist(), runs.end_pfn.tolist(), runs.normal.tolist())
        return list(zip(*columns, strict=True))

    def page_buffers(self, runs: RunTable, _data_len: int) -> list[memoryview]:
        view, size = memoryview(self.mem), self.page_size
        return [view[a * size : b * size] for a, b, normal in self._spans(runs) if normal]

    def pages_loaded(self, runs: RunTable) -> None:
        size = self.page_size
        for first, end, normal in self._spans(runs):
            if not normal:
                self.mem[first * size : end * size] = bytes((end - first) * size)
        self.loaded += 1

    def page(self, pfn: int) -> memoryview:
        return memoryview(self.mem)[pfn * self.page_size : (pfn + 1) * self.page_size]


@dataclass
class ConnectionPair:
    """A source and a destination joined in memory.

    Attributes:
        split: deliver in pieces of at most this many bytes (None: as produced).
        fill_sizes: if set, deliver through ``get_buffers``/``buffers_filled`` with these fill
            sizes (cycled) instead of ``receive_data``.
        attach_ram: attach a fresh zeroed guest RAM, through vmsim's ``RamLoader`` page sink,
            at the destination on ``ConfigurationReceived`` (``dest_guest_ram``; its bytes are
            ``dest_ram``), when the page size is vmsim's.
    """

    version: int = PROTOCOL_VERSION
    return_path: bool = True
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts | None = None
    now: float = 0.0
    split: int | None = None
    fill_sizes: Sequence[int] | None = None
    attach_ram: bool = True
    authenticated: bool = False  # both ends on TLS: frames after CHANNEL carry no checksum
    source: SourceConnection = field(init=False)
    dest: DestConnection = field(init=False)
    dest_guest_ram: GuestRam | None = field(init=False, default=None)
    main_stream: bytearray = field(init=False, default_factory=bytearray)
    return_stream: bytearray = field(init=False, default_factory=bytearray)

    def __post_init__(self) -> None:
        self.source = SourceConnection(
            version=self.version,
            return_path=self.return_path,
            limits=self.limits,
            timeouts=self.timeouts,
            now=self.now,
            authenticated=self.authenticated,
        )
        self.dest = DestConnection(
            return_path=self.return_path,
            limits=self.limits,
            timeouts=self.timeouts,
            now=self.now,
            authenticated=self.authenticated,
        )

    def split_every(self, nbytes: int | None) -> None:
        """Deliver in pieces of ``nbytes`` from now on."""
        self.split = nbytes

    def to_dest(self) -> list[Event]:
        """Move everything the source queued to the destination; return the dest's events."""
        return self._move(self.source, self.dest, self.main_stream)

    def to_source(self) -> list[Event]:
        """Move everything the destination queued to the source; return the source's events."""
        return self._move(self.dest, self.source, self.return_stream)

    def roundtrip(self) -> tuple[list[Event], list[Event]]:
        """Source to destination, then back: ``(dest_events, source_events)``."""
        dest_events = self.to_dest()
        return dest_events, self.to_source()

    def transfer(self) -> tuple[list[Event], list[Event]]:
        """Move bytes both ways until neither side has anything queued."""
        dest_events: list[Event] = []
        source_events: list[Event] = []
        while self.source.pending_send_bytes or self.dest.pending_send_bytes:
            dest_events += self.to_dest()
            source_events += self.to_source()
        return dest_events, source_events

    def drop(self, *, to_dest: bool = True) -> int:
        """Discard what one side has queued (a lossy link); return the bytes lost."""
        sender = self.source if to_dest else self.dest
        lost = 0
        while out := sender.data_to_send():
            size = sum(len(buf) for buf in out)
            sender.data_sent(size, self.now)
            lost += size
        return lost

    def close(self) -> tuple[list[Event], list[Event]]:
        """Both sides see end of file: ``(dest_events, source_events)``."""
        self.dest.receive_eof(self.now)
        self.source.receive_eof(self.now)
        return drain(self.dest), drain(self.source)

    def _move(
        self,
        sender: SourceConnection | DestConnection,
        receiver: SourceConnection | DestConnection,
        record: bytearray,
    ) -> list[Event]:
        events: list[Event] = []
        while out := sender.data_to_send():
            data = b"".join(bytes(buf) for buf in out)
            sender.data_sent(len(data), self.now)
            record += data
            events += self.deliver(receiver, data)
        return events

    def deliver(self, receiver: SourceConnection | DestConnection, data: bytes) -> list[Event]:
        """Feed ``data`` to ``receiver`` and take its events."""
        if self.fill_sizes is not None:
            return self._deliver_buffers(receiver, data)
        events: list[Event] = []
        for piece in pieces(data, self.split):
            receiver.receive_data(piece, self.now)
            events += self._drain(receiver)
        return events

    def _deliver_buffers(
        self, receiver: SourceConnection | DestConnection, data: bytes
    ) -> list[Event]:
        sizes: Iterator[int] = itertools.cycle(self.fill_sizes or [1])
        events: list[Event] = []
        pos = 0
        while pos < len(data):
            buffers = receiver.get_buffers()
            if not buffers:
                taken = self._drain(receiver)
                if not taken:
                    receiver.next_event()  # raises the stream's error, if that is why
                    msg = "receiver offers no buffers and has no event"
                    raise AssertionError(msg)
                events += taken
                continue
            pos += fill(buffers, data[pos : pos + max(1, next(sizes))], receiver, self.now)
            events += self._drain(receiver)
        return events

    def _drain(self, receiver: SourceConnection | DestConnection) -> list[Event]:
        events = []
        while (event := receiver.next_event()) is not None:
            events.append(event)
            if (
                isinstance(event, ConfigurationReceived)
                and self.attach_ram
                and event.config.page_size == VMSIM_PAGE_SIZE  # vmsim's RAM has 4 KiB pages
            ):
                # at once: the next frame is not looked at before the next call
                self.dest_guest_ram = GuestRam(event.config.ram_size)
                self.dest.attach_sink(RamLoader(self.dest_guest_ram))
        return events

    @property
    def dest_ram(self) -> memoryview | None:
        """The destination's guest RAM as writable bytes (compares equal to bytes)."""
        return None if self.dest_guest_ram is None else self.dest_guest_ram.view


def fill(
    buffers: list[memoryview],
    data: bytes,
    receiver: SourceConnection | DestConnection,
    now: float,
) -> int:
    """Copy a prefix of ``data`` into ``buffers`` (as recvmsg_into would); report it filled."""
    done = 0
    for buf in buffers:
        take = min(len(buf), len(data) - done)
        buf[:take] = data[done : done + take]
        done += take
        if done == len(data):
            break
    receiver.buffers_filled(done, now)
    return done


def drain(receiver: SourceConnection | DestConnection) -> list[Event]:
    """Take every event available now."""
    events = []
    while (event := receiver.next_event()) is not None:
        events.append(event)
    return events


def pieces(data: bytes, size: int | None) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (whole if None)."""
    if size is None:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


def run_migration(
    pair: ConnectionPair,
    ram: bytearray,
    *,
    rounds: Sequence[Sequence[tuple[int, int, int]]] = (((0, 2, 1), (2, 1, 2), (5, 3, 1)),),
    final: Sequence[tuple[int, int, int]] = ((8, 1, 1), (9, 2, 2)),
    handover: bool = True,
    page_size: int = PAGE_SIZE,
    on_step: Callable[[str], None] | None = None,
) -> tuple[list[Event], list[Event]]:
    """A complete small migration through ``pair``: ``(dest_events, source_events)``.

    The destination answers the way a daemon would: OPEN_ACK, LOADED, RESUMED.
    """
    src, dst = pair.source, pair.dest
    config = make_config(ram_pages=len(ram) // page_size, page_size=page_size)
    dest_events: list[Event] = []
    source_events: list[Event] = []

    def step(name: str) -> None:
        if on_step is not None:
            on_step(name)
        d, s = pair.transfer()
        dest_events.extend(d)
        source_events.extend(s)

    src.send_configuration(config)
    if pair.return_path:
        src.send_open_return_path()
    step("configuration")
    if pair.return_path:
        dst.send_open_ack()
        src.send_ping(1)
    src.send_section_start(1, "ram", 0, 4, {"ram_size": len(ram), "page_size": page_size})
    src.send_section_full(3, "cpu", 0, 2, {"fields": {"pc": 4096, "regs": [1, 2, 3]}})
    step("setup")
    for runs in rounds:
        src.send_ram(1, make_batch(ram, runs, page_size), end=False)
        step("round")
    src.send_switchover_start()
    src.send_ram(1, make_batch(ram, final, page_size), end=True)
    src.send_section_full(2, "serial0", 0, 1, {"fields": {"lsr": 96, "fifo": b"\x01\x02"}})
    src.send_eof()
    src.send_vmdesc({"devices": [{"name": "serial0", "instance_id": 0, "fields": []}]})
    step("complete")
    if pair.return_path:
        dst.send_loaded(digest="00ff", normal_pages=6, zero_pages=3, devices=2)
        step("loaded")
        if handover:
            src.send_handover()
            step("handover")
            dst.send_resumed("running")
            step("resumed")
    return dest_events, source_events


# --------------------------------------------------------------------------- replay


def batch_from_event(event: RamPagesReceived, page_size: int) -> Batch:
    """The batch that produced a RAM event received without RAM attached (data in scratch)."""
    runs = event.runs
    data = event.data if event.data is not None else memoryview(b"")
    views = []
    offset = 0
    for count, kind in zip(runs["n_pages"].tolist(), runs["kind"].tolist(), strict=True):
        if kind == PageKind.NORMAL:
            views.append(data[offset : offset + count * page_size])
            offset += count * page_size
    return Batch(
        first_pfns=runs["first_pfn"].astype(np.uint32),
        n_pages=runs["n_pages"].astype(np.uint16),
        kinds=runs["kind"].astype(np.uint8),
        data=tuple(views),
    )


def replay_main(events: Sequence[Event], source: SourceConnection) -> None:
    """Send, through ``source``, the frames that produced these destination events."""
    page_size = 0
    for event in events:
        match event:
            case ConfigurationReceived(config=config):
                page_size = config.page_size
                source.send_configuration(config)
            case ReturnPathRequested():
                source.send_open_return_path()
            case PingReceived(value=value):
                source.send_ping(value)
            case SectionStarted():
                source.send_section_start(
                    event.section_id, event.idstr, event.instance_id, event.version_id, event.setup
                )
            case SectionPartReceived():
                source.send_section_part(event.section_id, event.payload, end=event.end)
            case RamPagesReceived():
                batch = batch_from_event(event, page_size)
                source.send_ram(event.section_id, batch, end=event.end)
            case _:
                _replay_simple(event, source)


def _replay_simple(event: Event, source: SourceConnection) -> None:
    match event:
        case SwitchoverStarted():
            source.send_switchover_start()
        case DeviceStateReceived():
            source.send_section_full(
                event.section_id, event.idstr, event.instance_id, event.version_id, event.state
            )
        case StreamEnded():
            source.send_eof()
        case DescriptionReceived(vmdesc=vmdesc):
            source.send_vmdesc(vmdesc)
        case HandoverReceived():
            source.send_handover()
        case AbortReceived(code=code, reason=reason):
            source.send_abort(code, reason)
        case ChannelAnnounced(migration_id=migration_id, role=role):
            source.send_channel(migration_id, role)
        case ResolveRequested(migration_id=migration_id):
            source.send_resolve(migration_id)
        case StreamStarted() | ConnectionClosed():
            pass
        case _:
            _replay_postcopy(event, source)


def _replay_postcopy(event: Event, source: SourceConnection) -> None:
    match event:
        case PostcopyAdvised():
            source.send_postcopy_advise()
        case PagesDiscarded(ranges=ranges):
            source.send_postcopy_discard(ranges.first_pfn, ranges.end_pfn - ranges.first_pfn)
        case PostcopyListening():
            source.send_postcopy_listen()
        case PostcopyRunning():
            source.send_postcopy_run()
        case _:
            raise TypeError(event)


def send_reply(event: Event, dest: DestConnection) -> None:
    """Send, through ``dest``, the return-path frame that produced this source event."""
    match event:
        case ReturnPathAcked():
            dest.send_open_ack()
        case LoadCompleted():
            dest.send_loaded(
                digest=event.digest,
                normal_pages=event.normal_pages,
                zero_pages=event.zero_pages,
                devices=event.devices,
            )
        case DestinationResumed(runstate=runstate):
            dest.send_resumed(runstate)
        case DestinationFailed(code=code, reason=reason):
            dest.send_failed(code, reason)
        case OutcomeReported(migration_id=migration_id, outcome=outcome):
            dest.send_outcome(migration_id, outcome)
        case PagesRequested(ranges=ranges):
            dest.send_req_pages(ranges.first_pfn, ranges.end_pfn - ranges.first_pfn)
        case _:
            raise TypeError(event)


def replay_return(
    main_stream: bytes, replies: Sequence[Event], *, limits: Limits | None = None
) -> bytes:
    """Re-encode a return path: feed ``main_stream`` to a fresh destination frame by frame and
    send each reply (source events, PONGs excepted: those are automatic) as soon as it is legal.
    """
    dest = DestConnection(limits=limits or Limits(), timeouts=None, now=0.0)
    pending = [
        e
        for e in replies
        if not isinstance(e, PongReceived | ReturnStreamStarted | ConnectionClosed)
    ]
    out = bytearray()

    def flush() -> None:
        while pending:
            try:
                send_reply(pending[0], dest)
            except LocalProtocolError:
                return
            pending.pop(0)

    for byte in range(len(main_stream)):
        dest.receive_data(main_stream[byte : byte + 1], 0.0)
        if drain(dest):
            flush()
    flush()
    while chunk := dest.data_to_send():
        data = b"".join(bytes(b) for b in chunk)
        dest.data_sent(len(data), 0.0)
        out += data
    return bytes(out)


def decode_main(stream: bytes, *, return_path: bool, limits: Limits | None = None) -> list[Event]:
    """The events a destination (no RAM attached) reports for a whole main stream."""
    dest = DestConnection(
        return_path=return_path, limits=limits or Limits(), timeouts=None, now=0.0
    )
    dest.receive_data(stream, 0.0)
    events = drain(dest)
    dest.receive_eof(0.0)
    return events + drain(dest)


def sent_bytes(conn: SourceConnection | DestConnection) -> bytes:
    """Everything ``conn`` has queued, consumed."""
    out = bytearray()
    while chunk := conn.data_to_send():
        data = b"".join(bytes(b) for b in chunk)
        conn.data_sent(len(data), 0.0)
        out += data
    return bytes(out)


def received_ram(events: Sequence[Event], *, ram_size: int, page_size: int) -> bytearray:
    """Guest RAM rebuilt from the page data the events carry (no page sink attached).

    A naive oracle for vmsim's RamLoader: one page run at a time, in stream order.
    """
    out = bytearray(ram_size)
    for event in events:
        if not isinstance(event, RamPagesReceived):
            continue
        data = memoryview(event.data or b"")
        for record in event.runs:
            first, count = int(record["first_pfn"]), int(record["n_pages"])
            span = slice(first * page_size, (first + count) * page_size)
            if record["kind"] == PageKind.NORMAL:
                out[span], data = data[: count * page_size], data[count * page_size :]
            else:
                out[span] = bytes(count * page_size)
    return out


def normalize(events: Sequence[Event]) -> list[tuple[object, ...]]:
    """Events as comparable tuples: frames dropped, run tables and scratch data as lists/bytes."""
    out: list[tuple[object, ...]] = []
    for event in events:
        if isinstance(event, RamPagesReceived):
            runs = [
                tuple(int(x) for x in (r["first_pfn"], r["n_pages"], r["kind"])) for r in event.runs
            ]
            data = None if event.data is None else bytes(event.data)
            out.append(
                (
                    "RamPagesReceived",
                    event.section_id,
                    event.end,
                    event.normal_pages,
                    event.zero_pages,
                    runs,
                    data,
                )
            )
        elif hasattr(event, "frame"):
            out.append((type(event).__name__, dataclasses.replace(event, frame=None)))  # type: ignore[type-var]
        else:
            out.append((type(event).__name__, event))
    return out


def frame_offsets(events: Sequence[Event]) -> list[tuple[int, int]]:
    """``(offset, end)`` of each frame, from the events' FrameInfo."""
    spans = []
    for event in events:
        frame = getattr(event, "frame", None)
        if frame is not None:
            spans.append((frame.offset, frame.offset + 32 + frame.meta_len + frame.data_len))
    return spans


def perform(
    pair: ConnectionPair, script: object, ram: bytearray
) -> tuple[list[Event], list[Event]]:
    """Run a ````Script```` through ``pair``: ``(dest_events, source_events)``.

    The destination answers OPEN_ACK, then LOADED and RESUMED (handover) or nothing (abort).
    """
    src, dst = pair.source, pair.dest
    config = make_config(
        ram_pages=script.ram_pages,
        page_size=script.page_size,
        devices=script.devices,  # type: ignore[attr-defined]
    )
    src.send_configuration(config)
    if pair.return_path:
        src.send_open_return_path()
    dest_events, source_events = pair.transfer()
    if pair.return_path:
        dst.send_open_ack()
    calls = {
        "start": src.send_section_start,
        "full": src.send_section_full,
        "ping": src.send_ping,
        "switchover": src.send_switchover_start,
        "eof": src.send_eof,
        "vmdesc": src.send_vmdesc,
    }
    for name, args in script.steps:  # type: ignore[attr-defined]
        if name == "ram":
            section, runs, end = args
            src.send_ram(section, make_batch(ram, runs, script.page_size), end=end)  # type: ignore[attr-defined]
        elif name == "part":
            section, payload, end = args
            src.send_section_part(section, payload, end=end)
        else:
            calls[name](*args)
        d, s = pair.transfer()
        dest_events += d
        source_events += s
    finish: list[Callable[[], None]] = []
    if script.finish == "handover":  # type: ignore[attr-defined]
        finish = [
            lambda: dst.send_loaded(digest="d1", normal_pages=1, zero_pages=2, devices=3),
            src.send_handover,
            lambda: dst.send_resumed("running"),
        ]
    elif script.finish == "abort":  # type: ignore[attr-defined]
        finish = [lambda: src.send_abort(11, "migrate_cancel")]
    for action in finish:
        action()
        d, s = pair.transfer()
        dest_events += d
        source_events += s
    return dest_events, source_events


# --------------------------------------------------------------------------- Hypothesis strategies

N, Z = int(PageKind.NORMAL), int(PageKind.ZERO)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
maps = st.dictionaries(st.text(max_size=8), values, max_size=5)


@st.composite
def ram_runs(draw: st.DrawFn, ram_pages: int) -> list[tuple[int, int, int]]:
    """Non-overlapping runs ``(first_pfn, n_pages, kind)`` in a random order."""
    runs = []
    pfn = draw(st.integers(0, 3))
    for _ in range(draw(st.integers(0, 8))):
        count = draw(st.integers(1, 4))
        if pfn + count > ram_pages:
            break
        runs.append((pfn, count, draw(st.sampled_from([N, N, Z]))))
        pfn += count + draw(st.integers(0, 3))
    return draw(st.permutations(runs)) if draw(st.booleans()) else runs


@dataclass(frozen=True)
class Script:
    """A migration to perform: ``steps`` are ``(name, args)`` calls on the source."""

    version: int
    return_path: bool
    page_size: int
    ram_pages: int
    devices: tuple[tuple[str, int, int], ...]
    steps: tuple[tuple[str, tuple[object, ...]], ...]
    finish: str  # "handover", "abort" or "end"


@st.composite
def scripts(draw: st.DrawFn, *, max_pages: int = 48) -> Script:
    """A legal migration: setup, iterations, switchover, device state, EOF, description."""
    return_path = draw(st.booleans())
    page_size = draw(st.sampled_from([1024, 4096]))
    ram_pages = draw(st.integers(1, max_pages))
    names = draw(
        st.lists(
            st.sampled_from(["serial0", "cpu", "rtc", "blk0", "net0"]), unique=True, max_size=4
        )
    )
    devices = tuple((name, draw(st.integers(0, 3)), draw(st.integers(1, 9))) for name in names)
    steps: list[tuple[str, tuple[object, ...]]] = []
    pinged: set[int] = set()

    def ping():
        if not return_path or not draw(st.booleans()):
            return []
        value = draw(st.integers(0, 2**32 - 1).filter(lambda v: v not in pinged))
        pinged.add(value)  # a PING value is unique while in flight (SourceConnection.send_ping)
        return [("ping", (value,))]

    steps.append(
        ("start", (1, "ram", 0, 4, {"ram_size": ram_pages * page_size, "page_size": page_size}))
    )
    iterable = [1]
    if draw(st.booleans()):
        steps.append(("start", (7, "dirty-log", 0, 1, draw(maps))))
        iterable.append(7)
    early = devices[: draw(st.integers(0, len(devices)))]
    steps += [("full", (20 + i, *dev, draw(maps))) for i, dev in enumerate(early)]
    for _ in range(draw(st.integers(0, 4))):
        steps += ping()
        section = draw(st.sampled_from(iterable))
        if section == 1:
            steps.append(("ram", (1, draw(ram_runs(ram_pages)), False)))
        else:
            steps.append(("part", (section, draw(maps), False)))
    steps.append(("switchover", ()))
    for section in iterable:
        for _ in range(draw(st.integers(0, 2))):  # the final pass may span several END frames
            args = (
                (1, draw(ram_runs(ram_pages)), True)
                if section == 1
                else (section, draw(maps), True)
            )
            steps.append(("ram" if section == 1 else "part", args))
    steps += ping()
    steps += [
        ("full", (20 + i, *dev, draw(maps))) for i, dev in enumerate(devices) if draw(st.booleans())
    ]
    steps.append(("eof", ()))
    if draw(st.booleans()) or return_path:
        steps.append(("vmdesc", (draw(maps),)))
    finish = draw(st.sampled_from(["handover", "abort"])) if return_path else "end"
    return Script(
        version=draw(st.sampled_from(SUPPORTED_VERSIONS)),
        return_path=return_path,
        page_size=page_size,
        ram_pages=ram_pages,
        devices=devices,
        steps=tuple(steps),
        finish=finish,
    )


def deliver_ram(batch: Any, sink: RamLoader) -> RamPagesReceived:
    """Send one RAM PART frame of `batch` to a destination whose page sink is `sink` (8 pages)."""
    config = make_config(ram_pages=8, page_size=4096)
    pair = ConnectionPair()
    pair.source.send_configuration(config)
    pair.source.send_open_return_path()
    pair.transfer()
    pair.dest.attach_sink(sink)
    pair.dest.send_open_ack()
    pair.source.send_section_start(1, "ram", 0, 4, {"ram_size": 8 * 4096, "page_size": 4096})
    pair.source.send_ram(1, batch, end=False)
    events, _ = pair.transfer()
    return next(e for e in events if isinstance(e, RamPagesReceived))
