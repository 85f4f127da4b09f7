"""Fixed-size binary parts of the streams: stream header, frame header and frame footer.

All integers are big-endian (docs/protocol.md section 1). This module knows nothing of what a
frame means; it only packs and checks the fixed fields.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from protocol.checksum import new_hasher
from protocol.codes import FOOTER_MARKER, SUPPORTED_VERSIONS
from protocol.errors import ErrorCode, LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from protocol.checksum import Buffer

STREAM_HEADER: Final = struct.Struct(">4sHH")
FRAME_HEADER: Final = struct.Struct(">BBHIII")
FRAME_FOOTER: Final = struct.Struct(">B3sIQ")
_NO_RESERVED: Final = b"\x00\x00\x00"


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameHeader:
    """The decoded 16-byte frame header (see ``check_frame_header``)."""

    kind: int
    flags: int
    reserved: int
    section_id: int
    meta_len: int
    data_len: int


def encode_stream_header(magic: bytes, version: int) -> bytes:
    """The 8-byte stream header."""
    return STREAM_HEADER.pack(magic, version, 0)


def decode_stream_header(buf: Buffer, magic: bytes) -> int:
    """Check a stream header and return its version.

    Raises:
        LocalProtocolError: BAD_MAGIC, UNSUPPORTED_VERSION, or PROTOCOL_ERROR for reserved bits.
    """
    got_magic, version, reserved = STREAM_HEADER.unpack(buf)
    if got_magic != magic:
        msg = f"not a livemig migration stream: magic {got_magic!r} != {magic!r}"
        raise LocalProtocolError(msg, code=ErrorCode.BAD_MAGIC)
    if version not in SUPPORTED_VERSIONS:
        msg = (
            f"unsupported protocol version {version}: this receiver accepts versions "
            f"{SUPPORTED_VERSIONS[0]} to {SUPPORTED_VERSIONS[-1]}"
        )
        raise LocalProtocolError(msg, code=ErrorCode.UNSUPPORTED_VERSION)
    if reserved:
        msg = f"reserved stream header field is 0x{reserved:04x}, must be 0"
        raise LocalProtocolError(msg)
    return int(version)


def encode_frame_header(kind: int, section_id: int, meta_len: int, data_len: int) -> bytes:
    """The 16-byte frame header."""
    return FRAME_HEADER.pack(kind, 0, 0, section_id, meta_len, data_len)


def decode_frame_header(buf: Buffer) -> FrameHeader:
    """Unpack a frame header (unchecked)."""
    kind, flags, reserved, section_id, meta_len, data_len = FRAME_HEADER.unpack(buf)
    return FrameHeader(
        kind=kind,
        flags=flags,
        reserved=reserved,
        section_id=section_id,
        meta_len=meta_len,
        data_len=data_len,
    )


def check_frame_header(header: FrameHeader) -> None:
    """Flags and reserved must be 0.

    Raises:
        LocalProtocolError: PROTOCOL_ERROR when flags or reserved are set.
    """
    if header.flags or header.reserved:
        msg = (
            f"frame header flags 0x{header.flags:02x} / reserved 0x{header.reserved:04x} must be 0"
        )
        raise LocalProtocolError(msg)


def encode_footer(section_id: int, checksum: int) -> bytes:
    """The 16-byte frame footer."""
    return FRAME_FOOTER.pack(FOOTER_MARKER, _NO_RESERVED, section_id, checksum)


def check_footer(buf: Buffer, section_id: int, checksum: int) -> None:
    """Check a received footer against the header's section id and the computed checksum.

    Raises:
        LocalProtocolError: MISSING_FOOTER or CHECKSUM_MISMATCH.
    """
    marker, reserved, footer_section, footer_checksum = FRAME_FOOTER.unpack(buf)
    if marker != FOOTER_MARKER or reserved != _NO_RESERVED:
        msg = f"missing frame footer: marker 0x{marker:02x} reserved {reserved.hex()}"
        raise LocalProtocolError(msg, code=ErrorCode.MISSING_FOOTER)
    if footer_section != section_id:
        msg = f"mismatched section id in footer: read {footer_section} expected {section_id}"
        raise LocalProtocolError(msg, code=ErrorCode.MISSING_FOOTER)
    if footer_checksum != checksum:
        msg = f"checksum mismatch: footer 0x{footer_checksum:016x} != computed 0x{checksum:016x}"
        raise LocalProtocolError(msg, code=ErrorCode.CHECKSUM_MISMATCH)


def encode_frame(
    version: int, kind: int, section_id: int, meta: bytes, data: Iterable[Buffer] = ()
) -> bytes:
    """A whole frame as one bytes object (tests, vectors; the connections queue views instead)."""
    chunks = [bytes(d) for d in data]
    header = encode_frame_header(kind, section_id, len(meta), sum(len(c) for c in chunks))
    hasher = new_hasher(version)
    hasher.update(header)
    hasher.update(meta)
    for chunk in chunks:
        hasher.update(chunk)
    return b"".join([header, meta, *chunks, encode_footer(section_id, hasher.intdigest())])
