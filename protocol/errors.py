"""The protocol's one exception tree and its wire error codes.

``ProtocolError`` is abstract. ``LocalProtocolError`` means we broke the protocol (a refused send
changes nothing); ``RemoteProtocolError`` means the peer did. Internal code raises Local; the
receive entry points convert to Remote exactly once (h11's rule).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Self


class ErrorCode(enum.IntEnum):
    """Error codes carried on the wire in ABORT and FAILED (docs/protocol.md section 2)."""

    PROTOCOL_ERROR = 1
    BAD_MAGIC = 2
    UNSUPPORTED_VERSION = 3
    CHECKSUM_MISMATCH = 4
    FRAME_TOO_LARGE = 5
    UNEXPECTED_SECTION = 6
    BAD_PAGE_ADDRESS = 7
    LIMIT_EXCEEDED = 8
    CONFIG_MISMATCH = 9
    LOAD_FAILED = 10
    CANCELLED = 11
    TIMEOUT = 12
    INTERNAL = 13
    BUSY = 14
    DIGEST_MISMATCH = 15
    TRUNCATED = 16
    MISSING_FOOTER = 17
    UNKNOWN_COMMAND = 18
    UNSUPPORTED = 19
    BAD_METADATA = 20
    UNAUTHORIZED = 21
    DISCARDED = 22  # a recover refused: the destination discarded it before POSTCOPY_RUN


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameInfo:
    """Where a frame sits in its stream and what its header said.

    ``index`` counts frames from 0 (the stream header is not a frame); ``offset`` is the byte
    offset of the frame header from the start of the stream. ``kind`` is a ``FrameKind`` or
    ``ReturnKind`` when known, else the raw byte.
    """

    index: int
    offset: int
    kind: int
    section_id: int
    meta_len: int
    data_len: int

    @property
    def kind_name(self) -> str:
        """The kind's name, or its hex value when unknown."""
        name = getattr(self.kind, "name", None)
        if isinstance(name, str):
            return name
        return f"kind 0x{self.kind:02x}" if self.kind >= 0 else "unknown kind"

    def describe(self, idstr: str | None = None) -> str:
        """A short human description: ``frame 3 (SECTION_PART, section 2 'ram') at offset 99``."""
        section = f", section {self.section_id}" if self.section_id else ""
        name = f" {idstr!r}" if idstr is not None else ""
        return f"frame {self.index} ({self.kind_name}{section}{name}) at offset {self.offset}"


class ProtocolError(Exception):
    """Abstract root of the protocol's errors; raise a subclass.

    Attributes:
        message: what went wrong, without the location.
        code: the wire ``ErrorCode``.
        frame: the frame being sent or received, when known.
        idstr: the section's idstr, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode = ErrorCode.PROTOCOL_ERROR,
        frame: FrameInfo | None = None,
        idstr: str | None = None,
    ) -> None:
        if type(self) is ProtocolError:
            msg = "ProtocolError is abstract: raise LocalProtocolError or RemoteProtocolError"
            raise TypeError(msg)
        super().__init__(message)
        self.message = message
        self.code = code
        self.frame = frame
        self.idstr = idstr

    def __str__(self) -> str:
        where = f" [{self.frame.describe(self.idstr)}]" if self.frame is not None else ""
        return f"{self.code.name}: {self.message}{where}"

    def located(self, frame: FrameInfo | None, idstr: str | None = None) -> Self:
        """Fill in the frame and idstr if not yet known; return self."""
        if self.frame is None:
            self.frame = frame
        if self.idstr is None:
            self.idstr = idstr
        return self


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (or our own input was invalid)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the only exception a receiver raises for any input."""

    @classmethod
    def from_local(cls, exc: LocalProtocolError) -> RemoteProtocolError:
        """The same error, blamed on the peer."""
        return cls(exc.message, code=exc.code, frame=exc.frame, idstr=exc.idstr)
