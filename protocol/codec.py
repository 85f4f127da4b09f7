"""Compression of a PAGES frame's page data (multifd-compression zlib or zstd), both directions.

A compressed frame's data is one zlib stream or one zstd frame (with its content size) of the
frame's NORMAL pages, in run order. Decoding is bounded before it allocates: the output must be
exactly the ``normal_pages x page_size`` bytes the run table announces, and a frame that claims
more (a bomb), less, or carries bytes after its end is refused with a clear error. Pure
computation: no I/O, no clock.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import zstandard

from protocol.errors import ErrorCode, LocalProtocolError
from protocol.meta import bad

if TYPE_CHECKING:
    from collections.abc import Sequence

ZLIB_LEVELS: Final = range(10)
ZSTD_LEVELS: Final = range(21)


class Codec(enum.StrEnum):
    """The compression of a PAGES frame (QEMU's `MultiFDCompression` names)."""

    ZLIB = "zlib"
    ZSTD = "zstd"


@dataclass(frozen=True, slots=True)
class Compressed:
    """A frame's NORMAL pages, encoded with `codec`."""

    codec: Codec
    data: bytes


def compress(codec: Codec, level: int, data: Sequence[memoryview]) -> bytes:
    """The compressed form of the concatenated buffers."""
    if codec is Codec.ZLIB:
        packer = zlib.compressobj(level)
        return b"".join([*(packer.compress(view) for view in data), packer.flush()])
    size = sum(len(view) for view in data)  # the frame's content size: what decoding checks
    stream = zstandard.ZstdCompressor(level=level).compressobj(size=size)
    return b"".join([*(stream.compress(view) for view in data), stream.flush()])


def decompress(codec: Codec, data: memoryview | bytes, expected_len: int) -> bytes:
    """The ``expected_len`` bytes a compressed frame's data holds.

    Raises:
        LocalProtocolError: BAD_METADATA if the data does not decode to exactly
            ``expected_len`` bytes (too much: a bomb; too little; trailing bytes; corrupt).
    """
    try:
        out = _zlib(data, expected_len) if codec is Codec.ZLIB else _zstd(data, expected_len)
    except (zlib.error, zstandard.ZstdError) as exc:
        msg = f"{codec} page data does not decode: {exc}"
        raise LocalProtocolError(msg, code=ErrorCode.BAD_METADATA) from exc
    if len(out) != expected_len:
        msg = f"{codec} page data decodes to {len(out)} bytes, the runs need {expected_len}"
        raise bad(msg)
    return out


def _zlib(data: memoryview | bytes, expected_len: int) -> bytes:
    unpacker = zlib.decompressobj()
    out = unpacker.decompress(data, expected_len)
    if unpacker.unconsumed_tail:
        msg = f"zlib page data decodes to more than the {expected_len} bytes the runs need"
        raise bad(msg)
    if not unpacker.eof or unpacker.unused_data:
        msg = "zlib page data is not exactly one complete stream"
        raise bad(msg)
    return out


def _zstd(data: memoryview | bytes, expected_len: int) -> bytes:
    size = zstandard.frame_content_size(data)
    if size != expected_len:
        claim = "no content size" if size < 0 else f"a content size of {size} bytes"
        msg = f"zstd page data has {claim}, the runs need {expected_len}"
        raise bad(msg)
    unpacker = zstandard.ZstdDecompressor().decompressobj()
    out = unpacker.decompress(data)
    if not unpacker.eof or unpacker.unused_data:
        msg = "zstd page data is not exactly one complete frame"
        raise bad(msg)
    return out
