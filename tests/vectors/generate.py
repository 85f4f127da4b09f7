"""Regenerate the golden vectors in this folder, on purpose only.

    .venv/bin/python tests/vectors/generate.py

The vectors pin the wire format: ``tests/unit/protocol/test_protocol_vectors.py`` decodes each,
re-encodes it through the public API and requires the same bytes, and checks that
``build_vectors()`` still produces the files byte for byte. Change them only with the protocol
(and say so in docs/protocol.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers.pair import ConnectionPair, pattern_ram, run_migration  # noqa: E402

from protocol import CRC32_VERSION, PREVIOUS_VERSION, PROTOCOL_VERSION, Outcome  # noqa: E402

RAM_PAGES = 16
PAGE_SIZE = 1024  # the smallest legal page: small vectors, fast every-offset sweeps


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


def build_vectors() -> dict[str, bytes]:
    """Every vector by file name."""
    vectors = {
        "file_v3.bin": file_migration(PROTOCOL_VERSION),
        "file_v2.bin": file_migration(PREVIOUS_VERSION),
        "file_v1.bin": file_migration(CRC32_VERSION),
    }
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
