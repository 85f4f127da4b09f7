"""`livemig analyze`: a captured migration stream's structure as JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from protocol.analyze import analyze_stream

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CHUNK_BYTES: Final = 1 << 20


def analyze_file(path: Path) -> dict[str, object]:
    """Decode a stream file (`migrate file:PATH`); damage is reported, never raised."""
    return analyze_stream(_chunks(path))


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk
