"""Frame checksums: xxh3-64 (versions 2 and 3) or CRC-32 zero-extended to 64 bits (version 1)."""

from __future__ import annotations

import zlib
from typing import Final, Protocol

import xxhash

from protocol.codes import CRC32_VERSION

Buffer = bytes | bytearray | memoryview
"""A readable bytes-like buffer (``collections.abc.Buffer`` needs Python 3.12)."""


class Hasher(Protocol):
    """An incremental checksum over a frame's header, meta and data."""

    def update(self, data: Buffer, /) -> None:
        """Absorb more bytes."""

    def intdigest(self) -> int:
        """The checksum so far, as a u64."""


class _Crc32:
    """CRC-32 (zlib) with xxhash's incremental interface."""

    __slots__ = ("_crc",)

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: Buffer, /) -> None:
        self._crc = zlib.crc32(data, self._crc)

    def intdigest(self) -> int:
        return self._crc


class _Unchecked:
    """No checksum: the footer carries 0 and nobody computes one (docs/protocol.md 1.6)."""

    __slots__ = ()

    def update(self, data: Buffer, /) -> None:
        pass

    def intdigest(self) -> int:
        return 0


UNCHECKED: Final[Hasher] = _Unchecked()
"""The hasher of a stream whose transport authenticates every byte (TLS, CHANNEL checksum none)."""


def new_hasher(version: int, *, checked: bool = True) -> Hasher:
    """A fresh hasher for one frame of a stream of the given (supported) version.

    `checked` False: the stream dropped its checksums (`UNCHECKED`, a shared no-op).
    """
    if not checked:
        return UNCHECKED
    if version == CRC32_VERSION:
        return _Crc32()
    return xxhash.xxh3_64()
