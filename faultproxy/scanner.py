"""Follow the frame structure of a livemig byte stream, to stop exactly before a given frame.

The scanner sees the stream in chunks as the proxy receives them and says how many bytes may be
forwarded before the first frame a matcher accepts. It needs a frame's 16-byte header to know its
kind, and for COMMAND frames also their (small) metadata to know the command; until those bytes
have arrived the bytes from that frame's start are held back, never more. Command metadata is
decoded as the destination decodes it (`protocol.meta.unpack_meta` within the protocol's default
`Limits`), so every command a destination accepts can be matched. Page data is never held or
copied.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from protocol.codes import FrameKind
from protocol.errors import LocalProtocolError
from protocol.frames import FRAME_FOOTER, FRAME_HEADER, STREAM_HEADER
from protocol.limits import Limits
from protocol.meta import unpack_meta

if TYPE_CHECKING:
    from collections.abc import Callable

_LIMITS: Final = Limits()


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameStart:
    """A frame about to pass: its position, kind and (for COMMAND frames) command."""

    index: int
    offset: int
    kind: int
    command: int | None
    section_id: int


class _Where(enum.Enum):
    STREAM_HEADER = enum.auto()
    BOUNDARY = enum.auto()
    BODY = enum.auto()
    OPAQUE = enum.auto()  # not a livemig stream (or lost track): pass everything


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """What to do with a chunk: forward `passable` bytes, then maybe fire on `frame`."""

    passable: int
    frame: FrameStart | None = None


class StreamScanner:
    """Tracks where frames begin in one direction of a livemig connection."""

    def __init__(self, *, main_stream: bool) -> None:
        self._main_stream = main_stream
        self._where = _Where.STREAM_HEADER
        self._body_left = 0
        self._head = bytearray()  # a header seen in part (its bytes already passed)
        self.offset = 0  # bytes consumed so far
        self.frames = 0  # frames whose start was consumed

    def plan(self, data: bytes | memoryview, match: Callable[[FrameStart], bool] | None) -> Plan:
        """Consume as much of `data` as may be forwarded; stop before a matching frame."""
        view = memoryview(data)
        position = 0
        while position < len(view):
            where = self._where
            if where is _Where.OPAQUE:
                position = len(view)
            elif where is _Where.BODY:
                step = min(self._body_left, len(view) - position)
                self._body_left -= step
                position += step
                if self._body_left == 0:
                    self._where = _Where.BOUNDARY
            elif where is _Where.STREAM_HEADER:
                position += self._pass_stream_header(view[position:])
            else:
                if match is not None and not self._head:
                    frame = self._frame_at(view[position:], self.offset + position)
                    if frame is None:
                        break  # the header (or command meta) is incomplete: hold it to decide
                    if match(frame):
                        self.offset += position
                        return Plan(passable=position, frame=frame)
                position += self._pass_frame_header(view[position:])
        self.offset += position
        return Plan(passable=position)

    def _pass_stream_header(self, view: memoryview) -> int:
        taken = self._collect(view, STREAM_HEADER.size)
        if len(self._head) == STREAM_HEADER.size:
            self._check_stream_header(memoryview(self._head))
            self._head.clear()
        return taken

    def _pass_frame_header(self, view: memoryview) -> int:
        """Let a frame header through, collecting it across chunks to follow the structure.

        Nothing has to be decided about this frame (or it already started passing).
        """
        taken = self._collect(view, FRAME_HEADER.size)
        if len(self._head) == FRAME_HEADER.size:
            self._enter_frame(memoryview(self._head))
            self._head.clear()
        return taken

    def _collect(self, view: memoryview, size: int) -> int:
        """Take up to what a `size`-byte header still lacks; return how many bytes were taken."""
        take = min(size - len(self._head), len(view))
        self._head += view[:take]
        return take

    def _check_stream_header(self, header: memoryview) -> None:
        magic = bytes(header[:4])
        expected = b"LVMG" if self._main_stream else b"LVRP"
        self._where = _Where.BOUNDARY if magic == expected else _Where.OPAQUE

    def _frame_at(self, view: memoryview, offset: int) -> FrameStart | None:
        if len(view) < FRAME_HEADER.size:
            return None
        kind, _flags, _reserved, section_id, meta_len, _data_len = FRAME_HEADER.unpack(
            view[: FRAME_HEADER.size]
        )
        command = None
        if self._main_stream and kind == FrameKind.COMMAND and meta_len <= _LIMITS.max_meta_bytes:
            end = FRAME_HEADER.size + meta_len
            if len(view) < end:
                return None
            command = _command_of(view[FRAME_HEADER.size : end])
        return FrameStart(
            index=self.frames, offset=offset, kind=kind, command=command, section_id=section_id
        )

    def _enter_frame(self, header: memoryview) -> None:
        """A frame's header has passed: skip its meta, data and footer."""
        _kind, _flags, _reserved, _sid, meta_len, data_len = FRAME_HEADER.unpack(header)
        self.frames += 1
        self._where = _Where.BODY
        self._body_left = meta_len + data_len + FRAME_FOOTER.size


def _command_of(meta: memoryview) -> int | None:
    try:
        decoded = unpack_meta(meta, _LIMITS)
    except LocalProtocolError:
        return None
    command = decoded.get("cmd")
    return command if isinstance(command, int) else None
