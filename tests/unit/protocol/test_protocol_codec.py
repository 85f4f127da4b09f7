"""Compressed PAGES data: decoding is exact and bounded; bombs and junk are refused clearly."""

from __future__ import annotations

import zlib

import pytest
import zstandard

from protocol import LocalProtocolError
from protocol.codec import Codec, compress, decompress

PAGES = bytes(range(256)) * 16 * 4  # four 4 KiB pages


@pytest.mark.parametrize("codec", list(Codec))
def test_round_trip(codec):
    blob = compress(codec, 1, [memoryview(PAGES[:8192]), memoryview(PAGES[8192:])])

    assert len(blob) < len(PAGES)
    assert PAGES == decompress(codec, blob, len(PAGES))


@pytest.mark.parametrize(
    ("codec", "blob", "match"),
    [
        (Codec.ZLIB, zlib.compress(bytes(1 << 26), 9), "decodes to more than"),  # a bomb
        (Codec.ZSTD, zstandard.ZstdCompressor().compress(bytes(1 << 26)), "content size of"),
        (Codec.ZLIB, zlib.compress(PAGES)[:-9], "not exactly one complete stream"),
        (Codec.ZLIB, zlib.compress(PAGES) + b"junk", "not exactly one complete stream"),
        (Codec.ZLIB, zlib.compress(PAGES[:4096]), "decodes to 4096 bytes"),
        (Codec.ZSTD, zstandard.ZstdCompressor().compress(PAGES) + b"junk", "one complete frame"),
        (
            Codec.ZSTD,
            zstandard.ZstdCompressor(write_content_size=False).compress(PAGES),
            "no content size",
        ),
        (Codec.ZSTD, b"\x00" * 64, "does not decode"),
        (Codec.ZLIB, b"\x00" * 64, "does not decode"),
    ],
)
def test_bad_data_is_refused_with_a_clear_error(codec, blob, match):
    with pytest.raises(LocalProtocolError, match=match):
        decompress(codec, blob, len(PAGES))
