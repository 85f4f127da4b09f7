"""Regenerate the golden vectors in this folder, on purpose only.

    .venv/bin/python tests/vectors/generate.py

The vectors pin the wire format: ``tests/unit/protocol/test_protocol_vectors.py`` decodes each,
re-encodes it through the public API and requires the same bytes, and checks that
``build_vectors()`` still produces the files byte for byte. Change them only with the protocol
(and say so in docs/protocol.md).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
from helpers.pair import (  # noqa: E402
    ConnectionPair,
    make_batch,
    make_config,
    pattern_ram,
    run_migration,
    sent_bytes,
)

from protocol import (  # noqa: E402
    CRC32_VERSION,
    PREVIOUS_VERSION,
    PROTOCOL_VERSION,
    MigrationConfiguration,
    Outcome,
    PageKind,
    SourceConnection,
)
from protocol.codec import Codec, Compressed  # noqa: E402

RAM_PAGES = 16
PAGE_SIZE = 1024  # the smallest legal page: small vectors, fast every-offset sweeps
# Pages 4..7 of pattern_ram compressed once, stored: a library upgrade may compress differently,
# but must still decode these.
ZLIB_PAGES_4_TO_7 = bytes.fromhex(
    "7801b36b39251abdf0b951c53e4effa9b7d57236fd70ee3c2f95b0ec8d79ed61be90590fb40bb73379f45d91"
    "4f5dfdd1a6e98470e4fca706657bd87d27df54c9daf0cdb1fdac44dc9257a6d507798266dcd3ccdfcae0d673"
    "493679e57bab866382e1731feb95ec62f59e785d2963dd17fbd6d362318b5e1857eee70a9876473d77f34f97"
    "ae0bd289cbdf5ad41de10f9dfd50a76807b367ff5585b4359f6c9b4f8a442d786658be97c36fca2dd5ec8ddf"
    "9d3ace49c62f7d6d5673883778e67dad826d8ceebd97e552567db06e3c2e1431ef897ee96e369f49379433d7"
    "7f75683b231ebbf8a549d501eec0e97735f2b6fc72edbe2893b4e29d65fd5181b0398f748b77b2784db8a698"
    "bef6b3dda8d747637d34c18fe6f5d1626eb4841faddc46ebf5d126cd686b6eb4213bda861fedbe8cf6dc464a"
    "a715008100cfa0"
)
ZSTD_PAGES_4_TO_7 = bytes.fromhex(
    "28b52ffd60000f2d0800b40f3e84ca155ba1e73278be094f95db266cb2f84389cf1a60a6ec377dc30e549ae0"
    "2b71b702488ed41f65abf13c82c813599fe53076bc074d93d9246ab0f64187cd185ea4ea357bc10c5298de29"
    "6fb500468cd21d63a9ef3a80c611579de32e74ba054b91d72268aef43f85cb165ca2e83379bf0a5096dc276d"
    "b3f9448ad01b61a7ed387ec40f559be12c72b803498fd52066acf23d83c9145aa0e63177bd084e94da256bb1"
    "f74288ce195fa5eb367cc20d5399df2a70b601478dd31e64aaf03b81c712589ee42f75bb064c92d82369aff5"
    "4086cc175da3e9347ac00b5197dd286eb4fa458bd11c62a8ee397fc510569ce22d73b9044a90d62167adf301"
    "007b81fb7d2305"
)


def file_migration(version: int) -> bytes:
    """A file-mode migration: RAM normal + zero pages, FULL sections, EOF, VMDESCRIPTION."""
    pair = ConnectionPair(version=version, return_path=False)
    run_migration(pair, pattern_ram(RAM_PAGES, PAGE_SIZE), page_size=PAGE_SIZE)
    return bytes(pair.main_stream)


def return_path_migration(version: int = PROTOCOL_VERSION) -> tuple[bytes, bytes]:
    """A TCP-style migration with a return path: OPEN_ACK, PONG, LOADED, HANDOVER, RESUMED."""
    pair = ConnectionPair(version=version)
    run_migration(pair, pattern_ram(RAM_PAGES, PAGE_SIZE), page_size=PAGE_SIZE)
    return bytes(pair.main_stream), bytes(pair.return_stream)


def resolve_exchange(version: int = PROTOCOL_VERSION) -> tuple[bytes, bytes]:
    """A resolve connection: RESOLVE, OUTCOME in-doubt, HANDOVER, RESUMED."""
    pair = ConnectionPair(version=version)
    pair.source.send_resolve("mig-0001")
    pair.transfer()
    pair.dest.send_outcome("mig-0001", Outcome.IN_DOUBT)
    pair.transfer()
    pair.source.send_handover()
    pair.transfer()
    pair.dest.send_resumed("running")
    pair.transfer()
    return bytes(pair.main_stream), bytes(pair.return_stream)


def multifd_channel() -> bytes:
    """A multifd channel: CHANNEL, MULTIFD_SYNC, PAGES raw, zlib and zstd, MULTIFD_SYNC, EOF."""
    ram = pattern_ram(RAM_PAGES, PAGE_SIZE)
    config = multifd_config()
    source = SourceConnection(timeouts=None, now=0.0)
    source.open_multifd(config, 1)
    source.send_multifd_sync(1)
    source.send_pages(make_batch(ram, [(0, 2, PageKind.NORMAL), (2, 1, PageKind.ZERO)], PAGE_SIZE))
    pages = make_batch(ram, [(4, 4, PageKind.NORMAL)], PAGE_SIZE)
    source.send_pages(pages, Compressed(Codec.ZLIB, ZLIB_PAGES_4_TO_7))
    source.send_multifd_sync(2)
    source.send_pages(pages, Compressed(Codec.ZSTD, ZSTD_PAGES_4_TO_7))
    source.send_eof()
    return sent_bytes(source)


def unchecked_multifd_channel() -> bytes:
    """A multifd channel over TLS: CHANNEL with `checksum: none`, then footers carrying 0."""
    ram = pattern_ram(RAM_PAGES, PAGE_SIZE)
    source = SourceConnection(timeouts=None, now=0.0, authenticated=True)
    source.open_multifd(multifd_config(), 0)
    source.send_multifd_sync(1)
    source.send_pages(make_batch(ram, [(0, 2, PageKind.NORMAL), (2, 1, PageKind.ZERO)], PAGE_SIZE))
    source.send_eof()
    return sent_bytes(source)


def preempt_channel() -> bytes:
    """A postcopy-preempt channel: CHANNEL preempt, requested page 10, pages 3-4, EOF."""
    ram = pattern_ram(RAM_PAGES, PAGE_SIZE)
    source = SourceConnection(timeouts=None, now=0.0)
    source.open_preempt(make_config(ram_pages=RAM_PAGES, page_size=PAGE_SIZE))
    source.send_pages(make_batch(ram, [(10, 1, PageKind.NORMAL)], PAGE_SIZE))
    source.send_pages(make_batch(ram, [(3, 2, PageKind.NORMAL)], PAGE_SIZE))
    source.send_eof()
    return sent_bytes(source)


def postcopy_migration() -> tuple[bytes, bytes]:
    """A postcopy migration: ADVISE, a precopy round, the switch, a request, the rest, END."""
    ram = pattern_ram(RAM_PAGES, PAGE_SIZE)
    pair = ConnectionPair()
    src, dst = pair.source, pair.dest
    src.send_configuration(make_config(ram_pages=RAM_PAGES, page_size=PAGE_SIZE))
    src.send_open_return_path()
    src.send_postcopy_advise()
    pair.transfer()
    dst.send_open_ack()
    src.send_section_start(1, "ram", 0, 4, {"ram_size": len(ram), "page_size": PAGE_SIZE})
    first_pass = [(0, 8, PageKind.NORMAL), (8, 8, PageKind.ZERO)]
    src.send_ram(1, make_batch(ram, first_pass, PAGE_SIZE), end=False)
    pair.transfer()
    # The switch: the device page, the discard of what changed, the device state, RUN.
    src.send_ram(1, make_batch(ram, [(15, 1, PageKind.NORMAL)], PAGE_SIZE), end=False)
    src.send_postcopy_discard(np.array([3, 9]), np.array([2, 4]))
    src.send_postcopy_listen()
    src.send_section_full(2, "serial0", 0, 1, {"fields": {"lsr": 96, "fifo": b"\x01\x02"}})
    src.send_postcopy_run()
    pair.transfer()
    dst.send_req_pages(np.array([10]), np.array([1]))
    pair.transfer()
    src.send_ram(1, make_batch(ram, [(10, 1, PageKind.NORMAL)], PAGE_SIZE), end=False)
    pushed = [(3, 2, PageKind.NORMAL), (9, 1, PageKind.ZERO)]
    src.send_ram(1, make_batch(ram, pushed, PAGE_SIZE), end=False)
    src.send_ram(1, make_batch(ram, [(11, 2, PageKind.NORMAL)], PAGE_SIZE), end=True)
    src.send_eof()
    src.send_vmdesc({"devices": [{"name": "serial0", "instance_id": 0, "fields": []}]})
    pair.transfer()
    dst.send_loaded(digest="00ff", normal_pages=14, zero_pages=9, devices=1)
    pair.transfer()
    src.send_handover()
    pair.transfer()
    dst.send_resumed("running")
    pair.transfer()
    return bytes(pair.main_stream), bytes(pair.return_stream)


def _recover_channel() -> tuple[ConnectionPair, bytearray]:
    """A `recover` channel of migration `mig-0001`, resumed at the destination; its RAM."""
    config = make_config(ram_pages=RAM_PAGES, page_size=PAGE_SIZE)
    pair = ConnectionPair()
    pair.source.open_recovery(config, 1)
    pair.transfer()
    pair.dest.resume(config, None, 1)
    return pair, pattern_ram(RAM_PAGES, PAGE_SIZE)


def postcopy_recovery() -> tuple[bytes, bytes]:
    """A recover channel of the postcopy vector's migration: the bitmap, then pages 3-4."""
    pair, ram = _recover_channel()
    pair.dest.send_recv_bitmap(0, RAM_PAGES, bytes([0b1110_0111, 0xFF]))
    pair.transfer()
    pair.source.send_postcopy_resume()
    pair.source.send_ram(1, make_batch(ram, [(3, 2, PageKind.NORMAL)], PAGE_SIZE), end=False)
    pair.source.send_ram(1, make_batch(ram, [], PAGE_SIZE), end=True)
    pair.source.send_eof()
    pair.transfer()
    return bytes(pair.main_stream), bytes(pair.return_stream)


def precopy_resume() -> tuple[bytes, bytes]:
    """A recover channel of a broken precopy: RESUME_POINT (5 RAM frames loaded), then precopy
    goes on (pages 3-4), the switchover and the end of the stream."""
    pair, ram = _recover_channel()
    pair.dest.send_resume_point(5)
    pair.transfer()
    pair.source.send_precopy_resume()
    pair.source.send_ram(1, make_batch(ram, [(3, 2, PageKind.NORMAL)], PAGE_SIZE), end=False)
    pair.source.send_switchover_start()
    pair.source.send_ram(1, make_batch(ram, [], PAGE_SIZE), end=True)
    pair.source.send_eof()
    pair.transfer()
    return bytes(pair.main_stream), bytes(pair.return_stream)


def multifd_config() -> MigrationConfiguration:
    """The configuration the multifd vector's channel joins (sent on its main channel)."""
    return dataclasses.replace(
        make_config(ram_pages=RAM_PAGES, page_size=PAGE_SIZE), multifd_channels=2
    )


def build_vectors() -> dict[str, bytes]:
    """Every vector by file name."""
    vectors = {
        "file_v3.bin": file_migration(PROTOCOL_VERSION),
        "file_v2.bin": file_migration(PREVIOUS_VERSION),
        "file_v1.bin": file_migration(CRC32_VERSION),
        "multifd.bin": multifd_channel(),
        "preempt.bin": preempt_channel(),
        "multifd_tls.bin": unchecked_multifd_channel(),
    }
    vectors["postcopy.main.bin"], vectors["postcopy.return.bin"] = postcopy_migration()
    recovery = postcopy_recovery()
    vectors["postcopy_recover.main.bin"], vectors["postcopy_recover.return.bin"] = recovery
    vectors["precopy_resume.main.bin"], vectors["precopy_resume.return.bin"] = precopy_resume()
    for version, suffix in ((PROTOCOL_VERSION, ""), (PREVIOUS_VERSION, "_v2")):
        main, reply = return_path_migration(version)
        vectors[f"return_path{suffix}.main.bin"] = main
        vectors[f"return_path{suffix}.return.bin"] = reply
        main, reply = resolve_exchange(version)
        vectors[f"resolve{suffix}.main.bin"] = main
        vectors[f"resolve{suffix}.return.bin"] = reply
    return vectors


def main() -> None:
    """Write the vectors next to this file."""
    for name, data in build_vectors().items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
