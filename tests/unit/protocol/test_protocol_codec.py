"""Page encodings (multifd compression, XBZRLE): decoding is exact and bounded; junk is refused."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import zstandard
from helpers.pair import deliver_ram
from hypothesis import given
from hypothesis import strategies as st

from protocol import LocalProtocolError, PageKind, xbzrle
from protocol.codec import Codec, Compressor, Decompressor, compress, decompress, zstd_frame_len
from vmsim import GuestRam, PageBatch, RamLoader

PAGES = bytes(range(256)) * 16 * 4  # four 4 KiB pages


def _with_reserved_block() -> bytes:
    """A zstd frame whose first block header says type 3 (reserved)."""
    frame = bytearray(zstandard.ZstdCompressor().compress(PAGES))
    header_len = zstandard.frame_header_size(frame)
    frame[header_len] |= 0b110
    return bytes(frame)


@pytest.mark.parametrize("codec", list(Codec))
def test_round_trip(codec):
    blob = compress(codec, 1, [memoryview(PAGES[:8192]), memoryview(PAGES[8192:])])

    assert len(blob) < len(PAGES)
    assert PAGES == decompress(codec, blob, len(PAGES))


@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize("size", [0, 1, 4096, 300_000])
def test_a_zstd_frames_length_is_read_from_its_block_headers(checksum, size):
    rng = np.random.default_rng(size)
    data = rng.integers(0, 4, size, dtype=np.uint8).tobytes()  # compressible, several blocks
    frame = zstandard.ZstdCompressor(write_checksum=checksum).compress(data)

    assert len(frame) == zstd_frame_len(frame)
    assert len(frame) == zstd_frame_len(frame + b"more")
    assert -1 == zstd_frame_len(frame[:-1])
    assert -1 == zstd_frame_len(frame[: zstandard.frame_header_size(frame) + 2])
    assert data == Decompressor().decompress(Codec.ZSTD, frame, size)


def test_a_compressor_keeps_its_context_and_output_matches_a_fresh_ones():
    compressor = Compressor(Codec.ZSTD, 3)
    pieces = [memoryview(PAGES[:4096]), memoryview(PAGES[4096:])]

    assert (
        compressor.compress(pieces)
        == compressor.compress(pieces)
        == compress(Codec.ZSTD, 3, pieces)
    )


@pytest.mark.parametrize(
    ("codec", "blob", "match"),
    [
        (Codec.ZLIB, zlib.compress(bytes(1 << 26), 9), "decodes to more than"),  # a bomb
        (Codec.ZSTD, zstandard.ZstdCompressor().compress(bytes(1 << 26)), "content size of"),
        (Codec.ZLIB, zlib.compress(PAGES)[:-9], "not exactly one complete stream"),
        (Codec.ZLIB, zlib.compress(PAGES) + b"junk", "not exactly one complete stream"),
        (Codec.ZLIB, zlib.compress(PAGES[:4096]), "decodes to 4096 bytes"),
        (Codec.ZSTD, zstandard.ZstdCompressor().compress(PAGES) + b"junk", "one complete frame"),
        (Codec.ZSTD, zstandard.ZstdCompressor().compress(PAGES) * 2, "one complete frame"),
        (Codec.ZSTD, zstandard.ZstdCompressor().compress(PAGES)[:-2], "one complete frame"),
        (Codec.ZSTD, _with_reserved_block(), "reserved type"),
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


# --------------------------------------------------------------------------- XBZRLE


def test_xbzrle_round_trip_and_overflow():
    old = bytes(range(256)) * 16
    new = bytearray(old)
    new[0:3] = b"abc"
    new[4000:4010] = b"0123456789"
    delta = xbzrle.encode(old, bytes(new))
    assert delta is not None
    assert len(delta) < 20
    page = bytearray(old)
    xbzrle.decode_into(memoryview(page), delta)
    assert new == page
    assert b"" == xbzrle.encode(old, old)
    assert xbzrle.encode(old, bytes(4096)) is None  # no smaller than the page: sent whole


@pytest.mark.parametrize(
    ("delta", "match"),
    [
        (bytes([0x00, 0x05, 1, 2]), "does not fit"),  # 5 new bytes announced, 2 present
        (bytes([0x80, 0x80, 0x80, 0x01]), "truncated or longer"),  # a 4-byte length
        (bytes([0x90, 0x20, 0x01, 7]), "does not fit"),  # zrun 4112: beyond the page
        (bytes([0x05, 0x00]), "does not fit"),  # an empty changed run
        (bytes([0x05]), "truncated"),
    ],
)
def test_hostile_xbzrle_deltas_are_refused(delta, match):
    page = bytearray(4096)
    with pytest.raises(LocalProtocolError, match=match):
        xbzrle.decode_into(memoryview(page), delta)


def test_an_xbzrle_frame_applies_its_deltas_to_the_destinations_copy():
    """SECTION_PART with NORMAL, ZERO and XBZRLE runs: whole pages placed, deltas applied."""
    pages = np.arange(8 * 4096, dtype=np.uint64).astype(np.uint8).reshape(8, 4096)
    changed = pages[3].copy()
    changed[100:104] = 9
    delta = xbzrle.encode(pages[3].data, changed.data)
    assert delta is not None
    batch = PageBatch(
        first_pfns=np.array([0, 2, 3], dtype=np.uint32),
        n_pages=np.array([2, 1, 1], dtype=np.uint16),
        kinds=np.array([PageKind.NORMAL, PageKind.ZERO, PageKind.XBZRLE], dtype=np.uint8),
        data=(pages[0:2].reshape(-1).data, memoryview(delta)),
        normal_pages=2,
        zero_pages=1,
    )
    ram = GuestRam(8 * 4096)
    ram.pages[3] = pages[3]  # the copy the destination has from an earlier pass
    ram.pages[2] = 5
    dest = deliver_ram(batch, RamLoader(ram))

    assert (ram.pages[0:2] == pages[0:2]).all()
    assert not ram.pages[2].any()
    assert (ram.pages[3] == changed).all()
    assert 1 == dest.xbzrle_pages


@given(
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=4),
    tail=st.binary(max_size=8),
)
def test_a_mangled_zstd_frame_decodes_exactly_or_is_refused(cut, flips, tail):
    frame = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(PAGES))
    for at, mask in flips:
        frame[at % len(frame)] ^= mask
    blob = bytes(frame[: len(frame) - cut % len(frame)]) + tail
    try:
        out = decompress(Codec.ZSTD, blob, len(PAGES))
    except LocalProtocolError:
        return
    assert len(out) == len(PAGES)  # whatever it decoded, it is the announced size
