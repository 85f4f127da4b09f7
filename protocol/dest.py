"""The destination's end of a migration: receives the main stream, sends the return path."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

import numpy as np

from protocol import events as ev
from protocol import xbzrle_batch
from protocol.codec import Codec, DecodeJob, Decompressor
from protocol.codes import (
    MAIN_MAGIC,
    PROTOCOL_VERSION,
    RETURN_MAGIC,
    FrameKind,
    Outcome,
    ReturnKind,
)
from protocol.connection import Connection
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.limits import Limits, Timeouts
from protocol.messages import (
    KIND_INPUTS,
    MAIN_DECODERS,
    RETURN_DECODERS,
    decode_pages_meta,
    decode_ram_section_meta,
    decode_section_part,
)
from protocol.meta import pack_meta, unpack_meta
from protocol.postcopy import pack_ranges
from protocol.ram import RunTable, check_compressed_len, copy_into, parse_runs
from protocol.states import (
    MainInput,
    MainState,
    ReturnState,
    StreamMode,
    dest_close_is_clean,
    is_main_terminal,
)
from protocol.tracker import MainTracker, ReturnTracker

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from protocol.config import MigrationConfiguration
    from protocol.errors import FrameInfo
    from protocol.meta import MetaMap
    from protocol.ram import PageSink

_SECTION_KINDS: Final = frozenset(
    {FrameKind.SECTION_START, FrameKind.SECTION_PART, FrameKind.SECTION_END, FrameKind.SECTION_FULL}
)


class DestConnection(Connection):
    """The destination side: receives configuration, sections and commands; sends replies.

    PING is answered with PONG automatically (and reported as ``PingReceived``). Every
    ``send_*`` method checks the return-path table and raises ``LocalProtocolError`` (changing
    nothing) if the reply is illegal now; the return path's header (in the main stream's
    version) is queued before the first reply.

    Args:
        return_path: False to read a file stream (no replies can be sent).
        limits: bounds on what the main stream may make us allocate.
        timeouts: peer timeout (``ping_interval_s`` is unused here); None disables the timer.
        now: the current time (any monotonic clock, seconds).
        authenticated: the transport authenticates every byte (TLS), so a CHANNEL saying
            ``checksum: none`` is accepted; on any other connection it is ``BAD_METADATA``.
    """

    def __init__(
        self,
        *,
        return_path: bool = True,
        limits: Limits = Limits(),  # noqa: B008 - frozen, hence safe as a default
        timeouts: Timeouts | None = Timeouts(),  # noqa: B008 - frozen, hence safe as a default
        now: float,
        authenticated: bool = False,
    ) -> None:
        mode = StreamMode.RETURN_PATH if return_path else StreamMode.FILE
        super().__init__(
            mode=mode,
            limits=limits,
            timeouts=timeouts,
            now=now,
            send=(RETURN_MAGIC, PROTOCOL_VERSION),
            receive=(MAIN_MAGIC, FrameKind),
        )
        self._main = MainTracker(mode)
        self._ret = ReturnTracker()
        self._authenticated = authenticated
        self._sink: PageSink | None = None
        self._plan: RunTable | None = None
        self._scratch: memoryview | None = None
        self._codec: Codec | None = None
        self._decompressor = Decompressor()
        self.defer_decode = False  # compressed PAGES: PagesToDecode, decoded by the caller
        self._decoding: tuple[DecodeJob, RunTable] | None = None

    @property
    def our_state(self) -> ReturnState:
        """The return path's state (what we sent)."""
        return self._ret.state

    @property
    def their_state(self) -> MainState:
        """The main stream's state (what we received)."""
        return self._main.state

    @property
    def version(self) -> int | None:
        """The main stream's protocol version, once its header arrived."""
        return self._main.version

    @property
    def configuration(self) -> MigrationConfiguration | None:
        """The configuration received, if any."""
        return self._main.config

    @property
    def ram_section_id(self) -> int | None:
        """The RAM section's id in this stream, once its START arrived."""
        return self._main.ram_section_id

    @property
    def channel(self) -> ev.ChannelAnnounced | None:
        """The CHANNEL handshake received, if any (version 3 network streams)."""
        return self._main.channel

    def join(self, config: MigrationConfiguration, sink: PageSink | None) -> None:
        """This multifd channel carries pages of ``config``'s migration into ``sink``.

        Call it after its CHANNEL handshake (``ChannelAnnounced``, role multifd), before
        reading on: PAGES frames are checked against ``config``'s RAM.

        Raises:
            LocalProtocolError: not a new multifd channel of that migration.
        """
        self._main.join(config)
        self._sink = sink

    def resume(
        self,
        config: MigrationConfiguration,
        sink: PageSink | None,
        ram_section_id: int,
        *,
        advised: bool = False,
    ) -> None:
        """This recover channel takes up ``config``'s paused migration into ``sink``.

        A postcopy, or a precopy (``advised``: one that may still switch to postcopy).

        Call it after its CHANNEL handshake (``ChannelAnnounced``, role recover); then send
        the received bitmap (`send_recv_bitmap`).

        Raises:
            LocalProtocolError: not a new recover channel of that migration.
        """
        self._main.resume(config, ram_section_id, advised=advised)
        self._sink = sink

    def attach_sink(self, sink: PageSink) -> None:
        """Put the page data of RAM frames into ``sink`` from now on (``PageSink``).

        Call it after ``ConfigurationReceived``. Without a sink, page data lands in scratch
        space and ``RamPagesReceived.data`` carries it (the analyzer).

        Raises:
            LocalProtocolError: no configuration yet.
        """
        if self._main.config is None:
            msg = "attach_sink() before the configuration arrived"
            raise LocalProtocolError(msg)
        self._sink = sink

    # ------------------------------------------------------------------ sending

    def send_open_ack(self) -> None:
        """Queue OPEN_ACK: the configuration is accepted and guest RAM is ready."""
        self._send(ReturnKind.OPEN_ACK, {"version": self._writer.version})

    def send_req_pages(self, first_pfn: NDArray[np.integer], n_pages: NDArray[np.integer]) -> None:
        """Queue REQ_PAGES: the guest waits for these pages (postcopy; at most 64 ranges)."""
        self._send(ReturnKind.REQ_PAGES, {"ranges": pack_ranges(first_pfn, n_pages)})

    def send_recv_bitmap(self, first_pfn: int, n_pages: int, bitmap: bytes) -> None:
        """Queue RECV_BITMAP: pages from ``first_pfn`` held here (little-endian bits)."""
        meta = {"first_pfn": first_pfn, "n_pages": n_pages, "bitmap": bitmap}
        self._send(ReturnKind.RECV_BITMAP, meta)

    def send_resume_point(self, ram_frames: int) -> None:
        """Queue RESUME_POINT: a resumed precopy loaded the first ``ram_frames`` RAM frames."""
        self._send(ReturnKind.RESUME_POINT, {"ram_frames": ram_frames})

    def send_loaded(
        self, *, digest: str | None, normal_pages: int, zero_pages: int, devices: int
    ) -> None:
        """Queue LOADED: everything was loaded and checked (after EOF)."""
        meta = {
            "digest": digest,
            "normal_pages": normal_pages,
            "zero_pages": zero_pages,
            "devices": devices,
        }
        self._send(ReturnKind.LOADED, meta)

    def send_resumed(self, runstate: str) -> None:
        """Queue RESUMED (after HANDOVER): the VM runs, or stays paused, here."""
        self._send(ReturnKind.RESUMED, {"runstate": runstate})

    def send_failed(self, code: ErrorCode, reason: str) -> None:
        """Queue FAILED: we give up and discard what we received."""
        self._send(ReturnKind.FAILED, {"code": code, "reason": reason})

    def send_outcome(self, migration_id: str, outcome: Outcome) -> None:
        """Queue OUTCOME, answering RESOLVE."""
        self._send(ReturnKind.OUTCOME, {"migration_id": migration_id, "outcome": outcome})

    def _send(self, kind: ReturnKind, meta: MetaMap) -> None:
        """Check a reply exactly as the source will, then queue it."""
        meta_bytes = pack_meta(meta)
        info = self._writer.next_frame_info(kind, 0, len(meta_bytes), 0)
        if self._mode is StreamMode.FILE:
            msg = "this destination reads a file stream: it has no return path"
            raise LocalProtocolError(msg, frame=info)
        fresh = self._ret.state is ReturnState.IDLE
        try:
            if fresh:
                self._ret.header(self._writer.version, self._main)
            event = RETURN_DECODERS[kind](unpack_meta(meta_bytes, self._limits), self._limits)
            self._ret.accept(event, self._main)
        except LocalProtocolError as exc:
            if fresh:
                self._ret.state, self._ret.version = ReturnState.IDLE, None
            raise exc.located(info) from None
        self._queue(kind, 0, meta_bytes)

    def _pong(self, value: int) -> None:
        """Answer a PING if a PONG is legal now (it is not after our final reply)."""
        if self._mode is StreamMode.FILE:
            return
        with contextlib.suppress(LocalProtocolError):
            self._send(ReturnKind.PONG, {"value": value})

    def _expects_peer(self) -> bool:
        # A multifd channel may idle for long (no page of its stripes dirty): the main channel
        # watches the source.
        state = self._main.state
        return state is not MainState.MULTIFD and not is_main_terminal(self._main.mode, state)

    # ------------------------------------------------------------------ receiving

    def _on_stream_header(self, version: int) -> ev.Event:
        self._main.header(version)
        if not self._writer.started:
            self._writer.version = version
        return ev.StreamStarted(version=version)

    def _on_frame_header(self, info: FrameInfo) -> bool:
        kind = info.kind
        if not isinstance(kind, FrameKind):
            msg = f"unknown main-stream frame kind 0x{kind:02x}"
            raise LocalProtocolError(msg)
        if info.section_id and kind not in _SECTION_KINDS:
            msg = f"{kind.name} frames have section id 0, not {info.section_id}"
            raise LocalProtocolError(msg)
        self._plan = None
        if kind is FrameKind.PAGES:
            self._main.check_input(MainInput.PAGES)
            return True
        if kind in {FrameKind.SECTION_PART, FrameKind.SECTION_END}:
            return self._main.check_part(info.section_id, end=kind is FrameKind.SECTION_END)
        if kind is not FrameKind.COMMAND:
            self._main.check_input(KIND_INPUTS[kind])
        return False

    def _on_meta(self, info: FrameInfo, meta: memoryview) -> list[memoryview]:
        decoded = unpack_meta(meta, self._limits)
        self._codec, deltas = None, None
        if info.kind == FrameKind.PAGES:
            runs, self._codec = decode_pages_meta(decoded)
        else:
            runs, deltas = decode_ram_section_meta(decoded, FrameKind(info.kind).name)
        config = self._main.require_config()
        self._plan = parse_runs(
            runs,
            page_size=config.page_size,
            ram_pages=config.ram_pages,
            data_len=None if self._codec else info.data_len,
            limits=self._limits,
            delta_lens=deltas,
        )
        self._scratch = None
        if self._codec is not None:  # decoded once verified (_finish_ram)
            check_compressed_len(info.data_len, self._plan.normal_pages * config.page_size)
        if self._sink is None or self._codec is not None or deltas is not None:
            self._scratch = memoryview(bytearray(info.data_len))
            return [self._scratch]
        return self._sink.page_buffers(self._plan, info.data_len)

    def _defers(self, plan: RunTable) -> bool:
        return self.defer_decode and self._sink is not None and plan.normal_pages > 0

    def _decoded_len(self, plan: RunTable) -> int:
        return plan.normal_pages * self._main.require_config().page_size

    def _decode(self, plan: RunTable, codec: Codec, data: memoryview) -> memoryview | None:
        """Decompress a verified frame's pages into the sink (or return them without one)."""
        return self._place(
            plan, self._decompressor.decompress(codec, data, self._decoded_len(plan))
        )

    def _place(self, plan: RunTable, raw: bytes) -> memoryview | None:
        """Decoded pages into the sink (one copy), or returned as they are without one."""
        if self._sink is None:
            return memoryview(raw)
        copy_into(self._sink.page_buffers(plan, len(raw)), [raw])
        return None

    def _on_frame(self, info: FrameInfo, meta: memoryview) -> ev.Event:
        if self._plan is not None:
            event: ev.Event = self._finish_ram(info, self._plan)
        else:
            decoded = unpack_meta(meta, self._limits)
            kind = FrameKind(info.kind)
            if kind in {FrameKind.SECTION_PART, FrameKind.SECTION_END}:
                end = kind is FrameKind.SECTION_END
                event = decode_section_part(info.section_id, decoded, end=end)
            else:
                event = MAIN_DECODERS[kind](info.section_id, decoded, self._limits)
            self._main.accept(event)
            if isinstance(event, ev.ChannelAnnounced) and not event.checked:
                self._drop_checksums()
        if isinstance(event, ev.PingReceived):
            self._pong(event.value)
        return ev.with_frame(event, info)

    def _drop_checksums(self) -> None:
        """CHANNEL said ``checksum: none``: only a transport that authenticates may say so."""
        if not self._authenticated:
            msg = "CHANNEL asks for frames without checksums, but this connection is not TLS"
            raise LocalProtocolError(msg, code=ErrorCode.BAD_METADATA)
        self._reader.checked = False

    def pages_decoded(
        self, event: ev.PagesToDecode, raw: bytes | LocalProtocolError
    ) -> ev.MultifdPagesReceived:
        """`event`'s job finished with `raw` (its pages, or its error): place them, read on.

        Raises:
            RemoteProtocolError: the pages did not decode (or break the stream); it failed.
            LocalProtocolError: `event` is not the frame this connection waits for (a bug).
        """
        pending = self._decoding
        if pending is None or pending[0] is not event.job:
            msg = "pages_decoded() for a frame that is not waiting to be decoded"
            raise LocalProtocolError(msg)
        self._decoding = None
        plan = pending[1]
        try:
            if isinstance(raw, LocalProtocolError):
                raise raw
            done = self._pages_received(plan, self._place(plan, raw))
        except LocalProtocolError as exc:
            raise self._reader.fail(exc, event.frame) from exc
        self._reader.release()
        return ev.with_frame(done, event.frame) if event.frame else done

    def _pages_received(self, plan: RunTable, data: memoryview | None) -> ev.MultifdPagesReceived:
        event = ev.MultifdPagesReceived(
            normal_pages=plan.normal_pages, zero_pages=plan.zero_pages, runs=plan.runs, data=data
        )
        self._main.accept(event)
        if self._sink is not None:
            self._sink.pages_loaded(plan)
        return event

    def _finish_ram(self, info: FrameInfo, plan: RunTable) -> ev.Event:
        if info.kind == FrameKind.PAGES:
            data = self._scratch
            if self._codec is not None and data is not None and self._defers(plan):
                job = DecodeJob(self._codec, data, self._decoded_len(plan), self._decompressor)
                self._decoding = (job, plan)
                self._plan, self._scratch = None, None
                return ev.PagesToDecode(job=job)
            if self._codec is not None and data is not None:
                data = self._decode(plan, self._codec, data)
            self._plan, self._scratch = None, None
            return self._pages_received(plan, data)
        event = ev.RamPagesReceived(
            section_id=info.section_id,
            end=info.kind == FrameKind.SECTION_END,
            normal_pages=plan.normal_pages,
            zero_pages=plan.zero_pages,
            runs=plan.runs,
            data=self._scratch if self._sink is None else None,
            xbzrle_pages=plan.xbzrle_pages,
        )
        self._main.accept(event)
        if self._sink is not None and plan.delta_lens is not None and self._scratch is not None:
            self._apply_deltas(self._sink, plan, self._scratch)
        elif self._sink is not None:
            self._sink.pages_loaded(plan)
        self._plan, self._scratch = None, None
        return event

    def _apply_deltas(self, sink: PageSink, plan: RunTable, data: memoryview) -> None:
        """A verified frame with XBZRLE runs: place its whole pages, apply its deltas in place."""
        page_size = self._main.require_config().page_size
        sizes = np.where(plan.normal, (plan.end_pfn - plan.first_pfn) * page_size, 0)
        if plan.xbzrle is not None and plan.delta_lens is not None:
            sizes[plan.xbzrle] = plan.delta_lens
        starts = np.cumsum(sizes) - sizes
        offsets = starts.tolist()
        whole = plan.without_xbzrle()
        pieces = [
            data[offsets[i] : offsets[i] + int(sizes[i])] for i in np.flatnonzero(plan.normal)
        ]
        copy_into(sink.page_buffers(whole, whole.normal_pages * page_size), pieces)
        sink.pages_loaded(whole)
        if plan.xbzrle is None:
            return
        index = np.flatnonzero(plan.xbzrle)
        pfns = plan.first_pfn[index]
        pages, apply = sink.delta_pages(pfns)
        xbzrle_batch.decode_batch(
            pages,
            pfns[apply],
            np.frombuffer(data, dtype=np.uint8),
            starts[index][apply],
            sizes[index][apply],
        )

    def _on_eof(self) -> ev.Event:
        clean = dest_close_is_clean(self._main.mode, self._main.state, self._ret.state)
        self._main.state = MainState.CLOSED
        return ev.ConnectionClosed(clean=clean)

    def _on_failed(self) -> None:
        self._main.state = MainState.ERROR

    def _idstr_of(self, section_id: int) -> str | None:
        return self._main.idstr_of(section_id)
