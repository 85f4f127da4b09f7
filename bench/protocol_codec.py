"""Throughput of the protocol's RAM path against a plain copy of the same bytes (same run).

Encodes guest pages into wire buffers through ``SourceConnection.send_ram`` /
``data_to_send`` / ``data_sent`` (page data queued as views of guest RAM, checksummed as
"sent"), moves the bytes as a socket would (one copy, from the send buffers into the buffers
``DestConnection.get_buffers()`` returns) and decodes them into a second RAM buffer through
``buffers_filled`` (checksum verified, zero pages zero-filled). Batches hold 256-1024 pages,
in contiguous and in scattered (random) page order.

Run: ``.venv/bin/python -m bench.protocol_codec [--ram-mib 1024] [--chunk-kib 1024]`` (also part
of ``python -m bench micro``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from protocol import (
    PROTOCOL_VERSION,
    DestConnection,
    DeviceRef,
    MigrationConfiguration,
    PageKind,
    SourceConnection,
)
from vmsim import GuestRam, RamLoader

if TYPE_CHECKING:
    from numpy.typing import NDArray

PAGE = 4096
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class PageBatch:
    """The shape of vmsim's PageBatch (``RamBatchLike``)."""

    first_pfns: NDArray[np.uint32]
    n_pages: NDArray[np.uint16]
    kinds: NDArray[np.uint8]
    data: tuple[memoryview, ...]
    delta_lens: None = None


def make_batches(
    ram: memoryview, pfns: NDArray[np.int64], rng: np.random.Generator
) -> list[PageBatch]:
    """Split ``pfns`` into batches of 256-1024 pages; each batch sorted, runs coalesced."""
    batches = []
    start = 0
    while start < len(pfns):
        size = int(rng.integers(256, 1025))
        chunk = np.sort(pfns[start : start + size])
        start += size
        breaks = np.flatnonzero(np.diff(chunk) != 1) + 1
        firsts = chunk[np.concatenate(([0], breaks))]
        counts = np.diff(np.concatenate(([0], breaks, [len(chunk)])))
        data = tuple(
            ram[f * PAGE : (f + c) * PAGE]
            for f, c in zip(firsts.tolist(), counts.tolist(), strict=True)
        )
        batches.append(
            PageBatch(
                first_pfns=firsts.astype(np.uint32),
                n_pages=counts.astype(np.uint16),
                kinds=np.full(len(firsts), PageKind.NORMAL, dtype=np.uint8),
                data=data,
            )
        )
    return batches


def transfer(src: SourceConnection, dst: DestConnection, chunk: int) -> int:
    """Move everything queued at ``src`` into ``dst`` like a socket: at most ``chunk`` per call."""
    moved = 0
    while True:
        out = src.data_to_send()
        if not out:
            return moved
        n = copy_into(out, dst.get_buffers(), chunk)
        dst.buffers_filled(n, 0.0)
        src.data_sent(n, 0.0)
        moved += n
        while dst.next_event() is not None:
            pass


def copy_into(sources: list[bytes | memoryview], targets: list[memoryview], budget: int) -> int:
    """Copy a prefix of ``sources`` into ``targets`` (scatter/gather), at most ``budget`` bytes.

    Runs of small sources that fit the current target are gathered by one C-level join (plus a
    copy into the target), as the kernel walks an iovec in C; a Python loop per page would
    measure the simulation, not the protocol.
    """
    done = si = so = ti = to = 0
    while done < budget and si < len(sources) and ti < len(targets):
        dst = targets[ti]
        room = min(len(dst) - to, budget - done)
        if not so:
            sj, size = si, 0
            while sj < len(sources) and size + len(sources[sj]) <= room:
                size += len(sources[sj])
                sj += 1
            if sj - si > 1:
                dst[to : to + size] = b"".join(sources[si:sj])
                done, to, si = done + size, to + size, sj
                if to == len(dst):
                    ti, to = ti + 1, 0
                continue
        src = sources[si]
        k = min(len(src) - so, room)
        dst[to : to + k] = src[so : so + k] if so or k != len(src) else src
        done += k
        so += k
        to += k
        if so == len(src):
            si, so = si + 1, 0
        if to == len(dst):
            ti, to = ti + 1, 0
    return done


def run_protocol(
    src_ram: NDArray[np.uint8],
    dst_ram: GuestRam,
    batches: list[PageBatch],
    chunk: int,
    version: int,
) -> float:
    config = MigrationConfiguration(
        migration_id="bench",
        machine="livemig-virt-1.0",
        page_size=PAGE,
        ram_size=src_ram.nbytes,
        devices=(DeviceRef(idstr="ram", instance_id=0, version_id=4),),
        capabilities=(),
        uuid=None,
        vm={},
    )
    src = SourceConnection(version=version, return_path=False, timeouts=None, now=0.0)
    dst = DestConnection(return_path=False, timeouts=None, now=0.0)
    src.send_configuration(config)
    src.send_section_start(1, "ram", 0, 4, {"ram_size": src_ram.nbytes, "page_size": PAGE})
    transfer(src, dst, chunk)
    dst.attach_sink(RamLoader(dst_ram))
    started = time.perf_counter()
    for batch in batches:
        src.send_ram(1, batch, end=False)
        transfer(src, dst, chunk)
    return time.perf_counter() - started


def run_copy(
    src_ram: NDArray[np.uint8], dst_ram: NDArray[np.uint8], batches: list[PageBatch]
) -> float:
    """A plain copy of the same pages (numpy, one call per batch: gather/scatter of pages)."""
    src_pages = src_ram.reshape(-1, PAGE)
    dst_pages = dst_ram.reshape(-1, PAGE)
    started = time.perf_counter()
    for batch in batches:
        idx = np.repeat(batch.first_pfns.astype(np.int64), batch.n_pages) + _within(batch.n_pages)
        dst_pages[idx] = src_pages[idx]
    return time.perf_counter() - started


def _within(counts: NDArray[np.uint16]) -> NDArray[np.int64]:
    c = counts.astype(np.int64)
    return np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)


def measure(
    ram_mib: int = 1024, chunk_kib: int = 1024, version: int = PROTOCOL_VERSION
) -> dict[str, object]:
    """Print and return the codec rates next to plain copies of the same pages."""
    size = ram_mib * MIB
    rng = np.random.default_rng(42)
    src_ram = rng.integers(0, 256, size, dtype=np.uint8)
    dst = GuestRam(size)
    dst_ram = dst.array
    dst_ram[:] = 1  # pre-faulted
    pages = size // PAGE
    memcpy_s = min(_timed(lambda: np.copyto(dst_ram, src_ram)) for _ in range(3))
    memcpy_rate = size / memcpy_s / 1e6
    print(f"RAM {ram_mib} MiB, {pages} pages of {PAGE} B,", end=" ")
    print(f"chunk {chunk_kib} KiB, protocol version {version}")
    print(f"plain memcpy of all RAM:          {memcpy_rate:9.0f} MB/s")
    orders = {
        "contiguous": np.arange(pages, dtype=np.int64),
        "scattered": rng.permutation(pages).astype(np.int64),
    }
    results: dict[str, object] = {"ram_mib": ram_mib, "memcpy_mbps": memcpy_rate}
    for name, pfns in orders.items():
        batches = make_batches(src_ram.data, pfns, rng)
        runs = sum(len(b.first_pfns) for b in batches)
        copy_s = min(run_copy(src_ram, dst_ram, batches) for _ in range(2))
        dst_ram[:] = 1
        proto_s = min(
            run_protocol(src_ram, dst, batches, chunk_kib * 1024, version) for _ in range(2)
        )
        if not np.array_equal(src_ram, dst_ram):
            raise SystemExit("decoded RAM differs from the source RAM")
        copy_rate, proto_rate = size / copy_s / 1e6, size / proto_s / 1e6
        print(
            f"{name:>10}: {len(batches)} batches, {runs} runs"
            f" | copy of the same pages {copy_rate:6.0f} MB/s"
            f" | protocol encode+decode {proto_rate:6.0f} MB/s"
            f" | ratio {proto_rate / copy_rate:4.2f} (vs memcpy {proto_rate / memcpy_rate:4.2f})"
        )
        results[name] = {
            "batches": len(batches),
            "runs": runs,
            "copy_mbps": copy_rate,
            "protocol_mbps": proto_rate,
            "ratio_to_copy": proto_rate / copy_rate,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ram-mib", type=int, default=1024)
    parser.add_argument("--chunk-kib", type=int, default=1024, help="bytes per simulated send/recv")
    parser.add_argument("--version", type=int, default=PROTOCOL_VERSION)
    args = parser.parse_args()
    measure(args.ram_mib, args.chunk_kib, args.version)


def _timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
