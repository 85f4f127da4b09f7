"""The receive side of one stream: buffers to fill, frame boundaries, checksums, pause discipline.

Bytes arrive readinto-style: ``get_buffers()`` names the writable buffers the next bytes must
fill (frame header and footer staging, the meta buffer, guest RAM slices or scratch for page
data), ``buffers_filled(n)`` reports a filled prefix. Each frame is checked (header, sizes,
checksum, footer) and turned into one event by a ``FrameSink`` (the connection).

Pause discipline: once a frame's event is queued, nothing of the next frame is parsed and no
buffer for its meta or data is handed out until that event was taken with ``next_event()``
(``get_buffers()`` returns ``[]`` meanwhile). Parsing resumes only at the *next* call into the
receiver (``next_event``, ``get_buffers``, ``buffers_filled``, ``receive_data``,
``receive_eof``), so the application acts on every event (attach RAM, refuse) before the
following frame is looked at. Bytes given to ``receive_data`` while paused wait in a pending
buffer of at most ``Limits.max_buffered_bytes``.

Errors are sticky: the first one stops the stream; ``next_event()`` raises it (as
``RemoteProtocolError``) after the events that preceded it, and again on every later call.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol.checksum import new_hasher
from protocol.codes import FRAME_FOOTER_BYTES, FRAME_HEADER_BYTES, STREAM_HEADER_BYTES
from protocol.errors import ErrorCode, FrameInfo, LocalProtocolError, RemoteProtocolError
from protocol.frames import (
    check_footer,
    check_frame_header,
    decode_frame_header,
    decode_stream_header,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from protocol.checksum import Hasher
    from protocol.events import Event
    from protocol.limits import Limits


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameSink:
    """What a connection does with each part of its incoming stream (callbacks raise Local).

    Attributes:
        on_stream_header: a valid stream header (its version): return the event to report.
        on_frame_header: a frame header: check it; True if its meta must be decoded before its
            data (RAM frames).
        on_meta: the meta of a meta-first frame: return the buffers for its ``data_len`` bytes.
        on_frame: a complete, checksum-verified frame and its meta: return its event.
        on_eof: the stream ended between frames: return the ``ConnectionClosed`` event.
        on_failed: the stream failed (``next_event`` raises the error).
        idstr_of: the idstr of a section id, to name it in errors.
    """

    on_stream_header: Callable[[int], Event]
    on_frame_header: Callable[[FrameInfo], bool]
    on_meta: Callable[[FrameInfo, memoryview], list[memoryview]]
    on_frame: Callable[[FrameInfo, memoryview], Event]
    on_eof: Callable[[], Event]
    on_failed: Callable[[], None]
    idstr_of: Callable[[int], str | None]


class _Part(enum.Enum):
    STREAM_HEADER = enum.auto()
    FRAME_HEADER = enum.auto()
    META = enum.auto()
    DATA = enum.auto()
    FOOTER = enum.auto()


class _Segment:
    __slots__ = ("buf", "filled", "part")

    def __init__(self, part: _Part, buf: memoryview) -> None:
        self.part = part
        self.buf = buf
        self.filled = 0

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.filled


def _known(kinds: type[enum.IntEnum], value: int) -> int:
    """The kind as its enum member when known (errors then name it), else the raw value."""
    try:
        return kinds(value)
    except ValueError:
        return value


class FrameReader:
    """Incoming bytes of one stream to checked frames and events."""

    def __init__(
        self, *, magic: bytes, kinds: type[enum.IntEnum], sink: FrameSink, limits: Limits
    ) -> None:
        self._magic = magic
        self._kinds = kinds
        self._sink = sink
        self._limits = limits
        self._header = memoryview(bytearray(FRAME_HEADER_BYTES))
        self._footer = memoryview(bytearray(FRAME_FOOTER_BYTES))
        self._segments: deque[_Segment] = deque(
            [
                _Segment(_Part.STREAM_HEADER, memoryview(bytearray(STREAM_HEADER_BYTES))),
                _Segment(_Part.FRAME_HEADER, self._header),
            ]
        )
        self._events: deque[Event] = deque()
        self._pause_event: Event | None = None
        self._resume_due = False
        self._held = False
        self._deferred_header = False
        self._pending = bytearray()
        self._eof = False
        self._ended = False
        self.error: RemoteProtocolError | None = None
        self.version: int | None = None
        self.checked = True  # False: later footers' checksums are not verified (TLS)
        self._hasher: Hasher | None = None
        self._frame: FrameInfo | None = None
        self._meta = memoryview(b"")
        self._meta_first = False
        self._index = 0
        self._offset = STREAM_HEADER_BYTES

    # ------------------------------------------------------------------ public entry points

    @property
    def paused(self) -> bool:
        """A frame's event waits to be taken."""
        return self._pause_event is not None

    @property
    def ended(self) -> bool:
        """The stream ended (EOF processed) or failed."""
        return self._ended or self.error is not None

    def get_buffers(self) -> list[memoryview]:
        """Writable buffers for the next incoming bytes ([] while paused, ended or failed)."""
        self._resume_if_due()
        if self.paused or self.ended or self._eof or self._pending:
            return []
        return [seg.buf[seg.filled :] if seg.filled else seg.buf for seg in self._segments]

    def buffers_filled(self, nbytes: int) -> None:
        """A prefix of ``nbytes`` of ``get_buffers()`` was filled.

        Raises:
            LocalProtocolError: more bytes than ``get_buffers()`` offered (an I/O-layer bug).
        """
        if not nbytes:
            return
        available = sum(len(buf) for buf in self.get_buffers())  # resumes first if due
        if not 0 < nbytes <= available:
            msg = f"buffers_filled({nbytes}) but get_buffers() offered {available} bytes"
            raise LocalProtocolError(msg)
        self._guard(lambda: self._filled(nbytes))

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the buffers, keeping what arrives while paused (bounded)."""
        if self._eof:
            msg = "receive_data() after receive_eof()"
            raise LocalProtocolError(msg)
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes:
            self._resume_if_due()
            self._guard(lambda: self._feed(view))

    def receive_eof(self) -> None:
        """The transport reached end of file."""
        self._resume_if_due()
        self._eof = True
        self._guard(self._maybe_eof)

    def next_event(self) -> Event | None:
        """The next event, or None until more bytes arrive.

        The stream's error is raised after the events that preceded it, and on every call after.
        """
        self._resume_if_due()
        if self._events:
            event = self._events.popleft()
            if event is self._pause_event:
                if event.holds_reader:
                    self._held = True  # paused until `release`: its work is done elsewhere
                else:
                    self._pause_event = None
                    self._resume_due = True
            return event
        if self.error is not None:
            raise self.error
        return None

    def release(self) -> None:
        """The held frame's work is done (`holds_reader` events): read on.

        Raises:
            LocalProtocolError: nothing was held (an I/O-layer bug).
        """
        if not self._held:
            msg = "release() but no frame event holds the reader"
            raise LocalProtocolError(msg)
        self._held = False
        self._pause_event = None
        self._resume_due = True

    def fail(self, exc: LocalProtocolError, frame: FrameInfo | None) -> RemoteProtocolError:
        """The stream fails with `exc` (found outside the reader, about `frame`); the error."""
        self._held = False
        return self.error or self._record(exc.located(frame))

    def emit(self, event: Event, *, pause: bool = False) -> None:
        """Queue an event (``pause``: a frame event that must be taken before going on)."""
        self._events.append(event)
        if pause:
            self._pause_event = event

    # ------------------------------------------------------------------ internals

    def _resume_if_due(self) -> None:
        if self._resume_due:
            self._resume_due = False
            self._guard(self._resume)

    def _guard(self, step: Callable[[], None]) -> None:
        if self.error is not None:
            return
        try:
            step()
        except LocalProtocolError as exc:
            self._record(exc)

    def _record(self, exc: LocalProtocolError) -> RemoteProtocolError:
        """The stream fails with `exc`: nothing more is read; the error `next_event` raises."""
        frame = exc.frame or self._frame
        exc.located(frame, self._sink.idstr_of(frame.section_id) if frame else None)
        self.error = RemoteProtocolError.from_local(exc)
        self._segments.clear()
        self._pending = bytearray()
        self._sink.on_failed()
        return self.error

    def _feed(self, view: memoryview) -> None:
        while view.nbytes and not self.ended:
            if self.paused or self._pending:
                self._hold(view)
                return
            seg = self._segments[0]
            take = min(view.nbytes, seg.remaining)
            seg.buf[seg.filled : seg.filled + take] = view[:take]
            self._filled(take)
            view = view[take:]

    def _hold(self, view: memoryview) -> None:
        if len(self._pending) + view.nbytes > self._limits.max_buffered_bytes:
            msg = (
                f"{len(self._pending) + view.nbytes} bytes held while an event is not taken "
                f"exceeds max_buffered_bytes({self._limits.max_buffered_bytes})"
            )
            raise LocalProtocolError(msg, code=ErrorCode.LIMIT_EXCEEDED)
        self._pending += view

    def _filled(self, nbytes: int) -> None:
        while nbytes:
            seg = self._segments[0]
            take = min(nbytes, seg.remaining)
            if seg.part is _Part.META or seg.part is _Part.DATA:
                self._hash(
                    seg.buf if take == len(seg.buf) else seg.buf[seg.filled : seg.filled + take]
                )
            seg.filled += take
            nbytes -= take
            if not seg.remaining:
                self._segments.popleft()
                self._complete(seg)

    def _hash(self, buf: memoryview) -> None:
        if self._hasher is not None:
            self._hasher.update(buf)

    def _complete(self, seg: _Segment) -> None:
        if seg.part is _Part.STREAM_HEADER:
            self.version = decode_stream_header(seg.buf, self._magic)
            self.emit(self._sink.on_stream_header(self.version), pause=True)
        elif seg.part is _Part.FRAME_HEADER:
            if self.paused:
                self._deferred_header = True
            else:
                self._parse_header()
        elif seg.part is _Part.META and self._meta_first and self._frame is not None:
            targets = self._sink.on_meta(self._frame, self._meta)
            if sum(len(t) for t in targets) != self._frame.data_len:  # pragma: no cover - sink bug
                msg = "data buffers do not match data_len"
                raise LocalProtocolError(msg, code=ErrorCode.INTERNAL)
            self._push([_Segment(_Part.DATA, t) for t in targets if len(t)])
            self._push_tail()
        elif seg.part is _Part.FOOTER:
            self._finish_frame()

    def _parse_header(self) -> None:
        header = decode_frame_header(self._header)
        info = FrameInfo(
            index=self._index,
            offset=self._offset,
            kind=_known(self._kinds, header.kind),
            section_id=header.section_id,
            meta_len=header.meta_len,
            data_len=header.data_len,
        )
        self._frame = info
        check_frame_header(header)
        limits = self._limits
        if info.meta_len > limits.max_meta_bytes or info.data_len > limits.max_data_bytes:
            msg = (
                f"meta_len {info.meta_len} / data_len {info.data_len} exceeds max_meta_bytes"
                f"({limits.max_meta_bytes}) / max_data_bytes({limits.max_data_bytes})"
            )
            raise LocalProtocolError(msg, code=ErrorCode.FRAME_TOO_LARGE)
        self._meta_first = self._sink.on_frame_header(info)
        if not self._meta_first and info.data_len:
            msg = f"{info.kind_name} frames carry no data (data_len {info.data_len})"
            raise LocalProtocolError(msg)
        self._hasher = new_hasher(self.version or 0, checked=self.checked)
        self._hasher.update(self._header)
        self._meta = memoryview(bytearray(info.meta_len))
        self._push([_Segment(_Part.META, self._meta)])
        if not self._meta_first:
            self._push_tail()

    def _push_tail(self) -> None:
        self._push(
            [_Segment(_Part.FOOTER, self._footer), _Segment(_Part.FRAME_HEADER, self._header)]
        )

    def _push(self, segments: list[_Segment]) -> None:
        self._segments.extend(segments)
        while self._segments and not self._segments[0].remaining:
            self._complete(self._segments.popleft())

    def _finish_frame(self) -> None:
        info = self._frame
        if info is None or self._hasher is None:  # pragma: no cover - footer follows a header
            return
        check_footer(self._footer, info.section_id, self._hasher.intdigest())
        event = self._sink.on_frame(info, self._meta)
        self._index += 1
        self._offset += FRAME_HEADER_BYTES + info.meta_len + info.data_len + FRAME_FOOTER_BYTES
        self._frame = None
        self._hasher = None
        self._meta = memoryview(b"")
        self.emit(event, pause=True)

    def _unknown_frame(self) -> FrameInfo:
        return FrameInfo(
            index=self._index, offset=self._offset, kind=-1, section_id=0, meta_len=0, data_len=0
        )

    def _resume(self) -> None:
        if self._deferred_header:
            self._deferred_header = False
            self._parse_header()
        if self._pending and not self.paused:
            held = memoryview(self._pending)
            self._pending = bytearray()
            self._feed(held)
        self._maybe_eof()

    def _maybe_eof(self) -> None:
        if not self._eof or self._ended or self.paused or self._pending:
            return
        self._ended = True
        first = self._segments[0] if self._segments else None
        at_boundary = first is not None and first.filled == 0 and not self._deferred_header
        if (
            at_boundary
            and first is not None
            and first.part in {_Part.FRAME_HEADER, _Part.STREAM_HEADER}
        ):
            self._segments.clear()
            self.emit(self._sink.on_eof())
            return
        where = "the stream header" if self.version is None else f"frame {self._index}"
        if self._frame is None and self.version is not None:
            self._frame = self._unknown_frame()
        msg = f"the stream ended inside {where}"
        raise LocalProtocolError(msg, code=ErrorCode.TRUNCATED)
