"""The source's end of a migration: sends the main stream, receives the return path."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Final, NamedTuple

from protocol import events as ev
from protocol.codes import (
    CHECKSUM_NONE,
    MAIN_MAGIC,
    PROTOCOL_VERSION,
    RETURN_MAGIC,
    SUPPORTED_VERSIONS,
    ChannelRole,
    Command,
    FrameKind,
    ReturnKind,
)
from protocol.config import encode_configuration
from protocol.connection import Connection
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.limits import Limits, Timeouts
from protocol.messages import MAIN_DECODERS, RETURN_DECODERS, RETURN_INPUTS, decode_section_part
from protocol.meta import U32_MAX, bad, pack_meta, unpack_meta
from protocol.postcopy import pack_ranges
from protocol.ram import (
    check_batch_data,
    check_compressed_len,
    pack_delta_lens,
    pack_runs,
    parse_runs,
)
from protocol.states import (
    MainInput,
    MainState,
    ReturnState,
    StreamMode,
    is_return_terminal,
    may_ping,
    source_close_is_clean,
    stream_mode,
)
from protocol.tracker import MainTracker, ReturnTracker, unexpected

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    import numpy as np
    from numpy.typing import NDArray

    from protocol.codec import Compressed
    from protocol.config import MigrationConfiguration
    from protocol.errors import FrameInfo
    from protocol.meta import MetaMap
    from protocol.ram import RamBatchLike, RunTable

MAX_PINGS_IN_FLIGHT: Final = 64
_UNANNOUNCED: Final = frozenset({MainState.IDLE, MainState.STARTED})


class _Outgoing(NamedTuple):
    """A frame about to be checked and queued."""

    meta: MetaMap
    views: Sequence[memoryview]
    data_len: int
    event: ev.Event | None


class SourceConnection(Connection):
    """The source side: sends configuration, sections and commands; receives the return path.

    Every ``send_*`` method checks the main-stream table (``protocol.states``) and the frame's
    contents exactly as the destination will, and raises ``LocalProtocolError`` (changing
    nothing) if the frame is illegal now. The stream header is queued before the first frame.

    Args:
        version: protocol version to speak (3; 2 or 1 for an older destination, which then
            gets no CHANNEL handshake).
        return_path: False for a file stream (no return path, no PING, no HANDOVER).
        limits: bounds on what the return path may make us allocate; also applied to what we send.
        timeouts: PING interval and peer timeout; None disables both timers.
        now: the current time (any monotonic clock, seconds).
        authenticated: the transport authenticates every byte (TLS): CHANNEL says
            ``checksum: none`` and the frames after it carry no checksum (docs/protocol.md 1.6).
    """

    def __init__(
        self,
        *,
        version: int = PROTOCOL_VERSION,
        return_path: bool = True,
        limits: Limits = Limits(),  # noqa: B008 - frozen, hence safe as a default
        timeouts: Timeouts | None = Timeouts(),  # noqa: B008 - frozen, hence safe as a default
        now: float,
        authenticated: bool = False,
    ) -> None:
        if version not in SUPPORTED_VERSIONS:
            msg = f"cannot speak protocol version {version}: supported are {SUPPORTED_VERSIONS}"
            raise LocalProtocolError(msg, code=ErrorCode.UNSUPPORTED_VERSION)
        mode = stream_mode(return_path=return_path, version=version)
        super().__init__(
            mode=mode,
            limits=limits,
            timeouts=timeouts,
            now=now,
            send=(MAIN_MAGIC, version),
            receive=(RETURN_MAGIC, ReturnKind),
        )
        self.version = version
        self._authenticated = authenticated
        self._main = MainTracker(mode)
        self._ret = ReturnTracker()
        self._pings: dict[int, float] = {}
        self._last_ping_value = 0
        self._next_ping_at = now

    @property
    def our_state(self) -> MainState:
        """The main stream's state (what we sent)."""
        return self._main.state

    @property
    def their_state(self) -> ReturnState:
        """The return path's state (what we received)."""
        return self._ret.state

    @property
    def configuration(self) -> MigrationConfiguration | None:
        """The configuration we sent, if any."""
        return self._main.config

    @property
    def needs_channel_handshake(self) -> bool:
        """Whether this connection must open with ``send_channel`` (version 3 networks)."""
        return self._mode is StreamMode.CHANNELS

    # ------------------------------------------------------------------ sending

    def send_channel(self, migration_id: str, role: ChannelRole, index: int = 0) -> None:
        """Queue CHANNEL: the first frame of a version 3 network connection.

        ``send_configuration`` and ``send_resolve`` queue the handshake they imply themselves
        (role main or resolve); a connection of another role opens with this call.
        """
        meta = {
            "cmd": Command.CHANNEL,
            "migration_id": migration_id,
            "role": str(role),
            "index": index,
        }
        if self._authenticated:
            meta["checksum"] = CHECKSUM_NONE
        self._send(FrameKind.COMMAND, 0, meta)
        self._writer.checked = not self._authenticated

    def _announce(self, migration_id: str, role: ChannelRole) -> None:
        """Queue the CHANNEL handshake a first frame implies, if this connection needs one."""
        if self._mode is StreamMode.CHANNELS and self._main.state in _UNANNOUNCED:
            self.send_channel(migration_id, role)

    def send_configuration(self, config: MigrationConfiguration) -> None:
        """Queue CONFIGURATION (the first frame of a migration, after its CHANNEL handshake)."""
        self._announce(config.migration_id, ChannelRole.MAIN)
        self._send(FrameKind.CONFIGURATION, 0, encode_configuration(config))

    def send_open_return_path(self) -> None:
        """Queue OPEN_RETURN_PATH (right after the configuration)."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.OPEN_RETURN_PATH})

    def send_ping(self, value: int) -> None:
        """Queue PING ``value`` (u32); its PONG reports the round-trip time.

        Raises:
            LocalProtocolError: a PING with this value is still in flight (its PONG could not
                be told from the other's, and the second PONG would answer no PING).
        """
        if value in self._pings:
            msg = f"PING {value} is already in flight: each PING in flight needs its own value"
            raise LocalProtocolError(msg)
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.PING, "value": value})
        self._pings[value] = self._now
        while len(self._pings) > MAX_PINGS_IN_FLIGHT:
            del self._pings[next(iter(self._pings))]

    def send_section_start(
        self,
        section_id: int,
        idstr: str,
        instance_id: int,
        version_id: int,
        setup: Mapping[str, Any],
    ) -> None:
        """Queue SECTION_START of an iterable entry (``idstr == "ram"`` opens the RAM section)."""
        meta = {"idstr": idstr, "instance_id": instance_id, "version_id": version_id}
        self._send(FrameKind.SECTION_START, section_id, {**meta, "setup": dict(setup)})

    def send_ram(self, section_id: int, batch: RamBatchLike, *, end: bool) -> None:
        """Queue a RAM PART (or END) frame: the run table and views of the pages, not copied."""
        kind = FrameKind.SECTION_END if end else FrameKind.SECTION_PART

        def check() -> None:
            if not self._main.check_part(section_id, end=end):
                msg = f"section {section_id} is not the RAM section"
                raise unexpected(msg)

        def event(table: RunTable) -> ev.Event:
            return ev.RamPagesReceived(
                section_id=section_id,
                end=end,
                normal_pages=table.normal_pages,
                zero_pages=table.zero_pages,
                runs=table.runs,
                xbzrle_pages=table.xbzrle_pages,
            )

        self._send_pages(kind, section_id, batch, check, event)

    def send_pages(self, batch: RamBatchLike, compressed: Compressed | None = None) -> None:
        """Queue PAGES on a multifd channel: the run table and views of the pages, not copied.

        With ``compressed``, the frame carries that encoding of the NORMAL pages instead (it
        must be smaller than them: a page that does not shrink is sent raw).
        """

        def check() -> None:
            self._main.check_input(MainInput.PAGES)

        def event(table: RunTable) -> ev.Event:
            return ev.MultifdPagesReceived(
                normal_pages=table.normal_pages, zero_pages=table.zero_pages, runs=table.runs
            )

        self._send_pages(FrameKind.PAGES, 0, batch, check, event, compressed)

    def _send_pages(
        self,
        kind: FrameKind,
        section_id: int,
        batch: RamBatchLike,
        check: Callable[[], None],
        event: Callable[[RunTable], ev.Event],
        compressed: Compressed | None = None,
    ) -> None:
        def build() -> _Outgoing:
            check()
            config = self._main.require_config()
            runs = pack_runs(batch)
            deltas = pack_delta_lens(batch) if kind is not FrameKind.PAGES else None
            table = parse_runs(
                runs,
                page_size=config.page_size,
                ram_pages=config.ram_pages,
                data_len=None,
                limits=self._limits,
                delta_lens=deltas,
            )
            views = check_batch_data(batch, table, config.page_size)
            raw_len = table.normal_pages * config.page_size
            if deltas is not None:
                meta = {"runs": runs, "eos": True, "xbzrle": deltas}
                data_len = sum(len(view) for view in views)
                return _Outgoing(meta, views, data_len, event(table))
            if compressed is None:
                return _Outgoing({"runs": runs, "eos": True}, views, raw_len, event(table))
            check_compressed_len(len(compressed.data), raw_len)
            meta = {"runs": runs, "eos": True, "codec": str(compressed.codec)}
            blob = memoryview(compressed.data)
            return _Outgoing(meta, (blob,), len(blob), event(table))

        self._send_built(kind, section_id, build)

    def open_multifd(self, config: MigrationConfiguration, index: int) -> None:
        """Queue CHANNEL multifd ``index``: this connection carries pages of ``config``'s RAM."""
        self.send_channel(config.migration_id, ChannelRole.MULTIFD, index)
        self._main.join(config)

    def open_preempt(self, config: MigrationConfiguration) -> None:
        """Queue CHANNEL preempt: requested postcopy pages as PAGES frames, then EOF (1.10)."""
        self.send_channel(config.migration_id, ChannelRole.PREEMPT)
        self._main.join(config)

    def open_recovery(
        self, config: MigrationConfiguration, ram_section_id: int, *, advised: bool = False
    ) -> None:
        """Queue CHANNEL recover: this connection takes up ``config``'s paused migration.

        A postcopy: RECV_BITMAP comes back first; then `send_postcopy_resume` and the missing
        pages in RAM PART frames of ``ram_section_id``. A precopy: RESUME_POINT comes back; then
        `send_precopy_resume` and precopy goes on (docs/protocol.md 1.11).
        """
        self.send_channel(config.migration_id, ChannelRole.RECOVER)
        self._main.resume(config, ram_section_id, advised=advised)

    def send_postcopy_resume(self) -> None:
        """Queue POSTCOPY_RESUME (on a recover channel, once the received bitmap is in)."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.POSTCOPY_RESUME})

    def send_precopy_resume(self) -> None:
        """Queue PRECOPY_RESUME (on a recover channel, once RESUME_POINT is in): RAM PART follow."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.PRECOPY_RESUME})

    def send_multifd_sync(self, pass_number: int) -> None:
        """Queue MULTIFD_SYNC: this multifd channel sent its pages of passes up to this one."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.MULTIFD_SYNC, "pass": pass_number})

    def send_section_part(self, section_id: int, payload: Mapping[str, Any], *, end: bool) -> None:
        """Queue SECTION_PART (or END) of an iterable section other than RAM."""
        kind = FrameKind.SECTION_END if end else FrameKind.SECTION_PART
        self._send(
            kind,
            section_id,
            {"payload": dict(payload)},
            lambda meta: decode_section_part(section_id, meta, end=end),
        )

    def send_section_full(
        self,
        section_id: int,
        idstr: str,
        instance_id: int,
        version_id: int,
        state: Mapping[str, Any],
    ) -> None:
        """Queue SECTION_FULL: a device listed in the configuration, its whole VMState."""
        meta = {"idstr": idstr, "instance_id": instance_id, "version_id": version_id}
        self._send(FrameKind.SECTION_FULL, section_id, {**meta, "state": dict(state)})

    def send_postcopy_advise(self) -> None:
        """Queue POSTCOPY_ADVISE (at setup: this migration may switch to postcopy)."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.POSTCOPY_ADVISE})

    def send_postcopy_discard(
        self, first_pfn: NDArray[np.integer], n_pages: NDArray[np.integer]
    ) -> None:
        """Queue POSTCOPY_RAM_DISCARD of ascending, separate ranges (at most 8192)."""
        meta = {"cmd": Command.POSTCOPY_RAM_DISCARD, "ranges": pack_ranges(first_pfn, n_pages)}
        self._send(FrameKind.COMMAND, 0, meta)

    def send_postcopy_listen(self) -> None:
        """Queue POSTCOPY_LISTEN (the discards are done; device state follows)."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.POSTCOPY_LISTEN})

    def send_postcopy_run(self) -> None:
        """Queue POSTCOPY_RUN: the destination runs the guest; no ABORT is possible after it."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.POSTCOPY_RUN})

    def send_switchover_start(self) -> None:
        """Queue SWITCHOVER_START (the VM is stopped; END and FULL sections follow)."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.SWITCHOVER_START})

    def send_eof(self) -> None:
        """Queue EOF (all device state was sent)."""
        self._send(FrameKind.EOF, 0, {})

    def send_vmdesc(self, vmdesc: Mapping[str, Any]) -> None:
        """Queue VMDESCRIPTION, the trailing device description."""
        self._send(FrameKind.VMDESCRIPTION, 0, {"vmdesc": dict(vmdesc)})

    def send_handover(self) -> None:
        """Queue HANDOVER: ownership passes to the destination."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.HANDOVER})

    def send_abort(self, code: ErrorCode, reason: str) -> None:
        """Queue ABORT: the destination must discard the migration."""
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.ABORT, "code": code, "reason": reason})

    def send_resolve(self, migration_id: str) -> None:
        """Queue RESOLVE (the first frame of a resolve connection, after its CHANNEL handshake)."""
        self._announce(migration_id, ChannelRole.RESOLVE)
        self._send(FrameKind.COMMAND, 0, {"cmd": Command.RESOLVE, "migration_id": migration_id})

    def _send(
        self,
        kind: FrameKind,
        section_id: int,
        meta: MetaMap,
        decode: Callable[[MetaMap], ev.Event] | None = None,
    ) -> None:
        """Check a frame without page data exactly as the destination will, then queue it."""

        def build() -> _Outgoing:
            return _Outgoing(meta, (), 0, None)

        self._send_built(kind, section_id, build, decode)

    def _send_built(
        self,
        kind: FrameKind,
        section_id: int,
        build: Callable[[], _Outgoing],
        decode: Callable[[MetaMap], ev.Event] | None = None,
    ) -> None:
        """Build and check a frame after the (implicit) stream header; queue it if legal.

        A refused frame changes nothing: the header transition is undone as well.
        """
        info = self._writer.next_frame_info(kind, section_id, 0, 0)
        fresh = self._main.state is MainState.IDLE
        try:
            if fresh:
                self._main.header(self.version)
            out = build()
            meta_bytes = pack_meta(out.meta)
            info = self._writer.next_frame_info(kind, section_id, len(meta_bytes), out.data_len)
            self._check_frame_size(section_id, len(meta_bytes), out.data_len)
            decoded = unpack_meta(meta_bytes, self._limits)
            if out.event is not None:
                event = out.event
            elif decode is not None:
                event = decode(decoded)
            else:
                event = MAIN_DECODERS[kind](section_id, decoded, self._limits)
            self._main.accept(event)
        except LocalProtocolError as exc:
            if fresh:
                self._main.state, self._main.version = MainState.IDLE, None
            raise exc.located(info, self._main.idstr_of(section_id)) from None
        self._queue(kind, section_id, meta_bytes, out.views, out.data_len)

    def _check_frame_size(self, section_id: int, meta_len: int, data_len: int) -> None:
        if not 0 <= section_id <= U32_MAX:
            msg = f"section id {section_id} is not a u32"
            raise bad(msg)
        if meta_len > self._limits.max_meta_bytes or data_len > self._limits.max_data_bytes:
            msg = (
                f"meta {meta_len} / data {data_len} bytes exceeds max_meta_bytes"
                f"({self._limits.max_meta_bytes}) / max_data_bytes({self._limits.max_data_bytes})"
            )
            raise LocalProtocolError(msg, code=ErrorCode.FRAME_TOO_LARGE)

    # ------------------------------------------------------------------ timers

    def _ping_due_at(self) -> float | None:
        pinging = self._mode is not StreamMode.FILE and may_ping(self._mode, self._main.state)
        if not pinging or is_return_terminal(self._ret.state):
            return None
        return self._next_ping_at

    def _send_auto_ping(self, now: float) -> None:
        self._last_ping_value = self._last_ping_value % U32_MAX + 1
        self.send_ping(self._last_ping_value)
        if self._timeouts is not None:
            self._next_ping_at = now + self._timeouts.ping_interval_s

    def _expects_peer(self) -> bool:
        return self._mode is not StreamMode.FILE and not is_return_terminal(self._ret.state)

    # ------------------------------------------------------------------ receiving

    def _on_stream_header(self, version: int) -> ev.Event:
        if self._mode is StreamMode.FILE:
            msg = "a return path arrived, but this stream has none (file mode)"
            raise LocalProtocolError(msg)
        self._ret.header(version, self._main)
        return ev.ReturnStreamStarted(version=version)

    def _on_frame_header(self, info: FrameInfo) -> bool:
        kind = info.kind
        if not isinstance(kind, ReturnKind):
            msg = f"unknown return-path frame kind 0x{kind:02x}"
            raise LocalProtocolError(msg)
        if info.section_id:
            msg = f"return-path frames have section id 0, not {info.section_id}"
            raise LocalProtocolError(msg)
        self._ret.check_input(RETURN_INPUTS[kind], self._main)
        return False

    def _on_meta(self, info: FrameInfo, meta: memoryview) -> list[memoryview]:  # pragma: no cover
        del info, meta
        msg = "return-path frames are not meta-first"
        raise LocalProtocolError(msg, code=ErrorCode.INTERNAL)

    def _on_frame(self, info: FrameInfo, meta: memoryview) -> ev.Event:
        decoded = unpack_meta(meta, self._limits)
        event = RETURN_DECODERS[ReturnKind(info.kind)](decoded, self._limits)
        if isinstance(event, ev.PongReceived):
            sent_at = self._pings.pop(event.value, None)
            if sent_at is None:
                msg = f"PONG {event.value} answers no PING in flight"
                raise LocalProtocolError(msg)
            event = replace(event, rtt_s=self._now - sent_at)
        self._ret.accept(event, self._main)
        return ev.with_frame(event, info)

    def _on_eof(self) -> ev.Event:
        clean = source_close_is_clean(self._main.state, self._ret.state)
        self._ret.state = ReturnState.CLOSED
        return ev.ConnectionClosed(clean=clean)

    def _on_failed(self) -> None:
        self._ret.state = ReturnState.ERROR

    def _idstr_of(self, section_id: int) -> str | None:
        return None if section_id == 0 else self._main.idstr_of(section_id)
