"""Micro-benchmark of vmsim's dirty tracking and page gathering.

    python -m bench.vmsim_dirty [--ram-mib 1024] [--repeat 5]    (also in python -m bench micro)

Prints, for guest RAM of --ram-mib MiB (1 GiB by default):
- the time of a dirty-log sync (DirtyLog.sync) and of the RAM handler's bitmap sync
  (state_pending_exact: sync + OR into the migration bitmap + count), and of counting dirty
  pages, at several dirty densities;
- the page-gather rate of RamSaveHandler batches over all of RAM (random fill), alone and with
  the bytes copied into a destination's RAM, next to a plain memory copy (numpy.copyto) of the
  same size measured in the same run, as a ratio (machines differ; ratios travel).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

from vmsim import PAGE_SIZE, Fill, GuestRam, RamSaveHandler
from vmsim.fill import fill_ram

if TYPE_CHECKING:
    from collections.abc import Callable

DENSITIES = (0.0001, 0.001, 0.01, 0.1, 0.5, 1.0)
BATCH_PAGES = 256


def median_s(
    action: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None
) -> float:
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dirty_random_pages(ram: GuestRam, density: float, seed: int) -> None:
    n_dirty = int(ram.n_pages * density)
    pfns = np.random.default_rng(seed).choice(ram.n_pages, size=n_dirty, replace=False)
    words = (pfns.astype(np.uint64) * np.uint64(PAGE_SIZE // 8)) + np.uint64(3)
    ram.write_words(words, words)


def bench_sync_and_count(ram: GuestRam, repeat: int) -> list[dict[str, float]]:
    rows = []
    print(
        f"\n{'dirty pages':>12} {'density':>8} {'sync (us)':>10} {'count (us)':>11} "
        f"{'bitmap sync (us)':>17}"
    )
    handler = RamSaveHandler(ram)
    for density in DENSITIES:
        handler.save_setup()
        while handler.save_live_iterate(1 << 20) is not None:
            pass
        dirty_random_pages(ram, density, seed=1)
        count_s = median_s(ram.dirty_log.count, repeat)
        n_dirty = ram.dirty_log.count()
        sync_s = median_s(
            ram.dirty_log.sync, repeat, setup=functools.partial(dirty_random_pages, ram, density, 2)
        )
        exact_s = median_s(
            handler.state_pending_exact,
            repeat,
            setup=functools.partial(dirty_random_pages, ram, density, 3),
        )
        handler.save_cleanup()
        print(
            f"{n_dirty:>12} {density:>8.2%} {sync_s * 1e6:>10.0f} {count_s * 1e6:>11.0f} "
            f"{exact_s * 1e6:>17.0f}"
        )
        rows.append(
            {
                "dirty_pages": n_dirty,
                "density": density,
                "sync_us": sync_s * 1e6,
                "count_us": count_s * 1e6,
                "bitmap_sync_us": exact_s * 1e6,
            }
        )
    return rows


def gather_pass(source: GuestRam, destination: RamSaveHandler | None, dirty: float) -> float:
    """Seconds for one pass of batches over the pages in the bitmap (all, or a random share)."""
    handler = RamSaveHandler(source)
    handler.save_setup()
    if dirty < 1.0:
        while handler.save_live_iterate(1 << 20) is not None:
            pass
        dirty_random_pages(source, dirty, seed=4)
        handler.state_pending_exact()
    start = time.perf_counter()
    while (batch := handler.save_live_iterate(BATCH_PAGES)) is not None:
        if destination is not None:
            destination.load_state(batch)
    elapsed = time.perf_counter() - start
    handler.save_cleanup()
    return elapsed


def bench_gather(ram: GuestRam, repeat: int) -> dict[str, object]:
    destination_ram = GuestRam(ram.size_bytes, prefault=True)
    receiver = RamSaveHandler(destination_ram)
    copy_s = median_s(lambda: np.copyto(destination_ram.array, ram.array), repeat)
    copy_mb_s = ram.size_bytes / copy_s / 1e6
    print(
        f"\nplain copy (numpy.copyto) of {ram.size_bytes >> 20} MiB: {copy_s * 1e3:.1f} ms "
        f"= {copy_mb_s:,.0f} MB/s"
    )
    print(
        f"\n{'gather (batches of ' + str(BATCH_PAGES) + ' pages)':<48} {'pages':>8} "
        f"{'ms':>8} {'MB/s':>9} {'/ copy':>7}"
    )
    rows = []
    for label, dirty, target in (
        ("all RAM, batches only (views)", 1.0, None),
        ("all RAM, batches + copy into destination", 1.0, receiver),
        ("10% scattered, batches only (views)", 0.1, None),
        ("10% scattered, batches + copy into destination", 0.1, receiver),
    ):
        seconds = statistics.median(gather_pass(ram, target, dirty) for _ in range(repeat))
        pages = ram.n_pages if dirty == 1.0 else int(ram.n_pages * dirty)
        rate = pages * PAGE_SIZE / seconds / 1e6
        print(
            f"{label:<48} {pages:>8} {seconds * 1e3:>8.1f} {rate:>9,.0f} {rate / copy_mb_s:>6.2f}x"
        )
        rows.append(
            {"what": label, "pages": pages, "mbps": rate, "ratio_to_copy": rate / copy_mb_s}
        )
    return {"copy_mbps": copy_mb_s, "gather": rows}


def measure(ram_mib: int = 1024, repeat: int = 5) -> dict[str, object]:
    """Print and return the sync and gather figures for guest RAM of ram_mib MiB."""
    start = time.perf_counter()
    ram = GuestRam(ram_mib * 1024 * 1024)
    fill_ram(ram, Fill.RANDOM, seed=0)
    print(
        f"guest RAM {ram_mib} MiB = {ram.n_pages} pages, random fill in "
        f"{time.perf_counter() - start:.2f} s (includes first touch)"
    )
    sync = bench_sync_and_count(ram, repeat)
    return {"ram_mib": ram_mib, "sync": sync, **bench_gather(ram, repeat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ram-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    measure(args.ram_mib, args.repeat)


if __name__ == "__main__":
    main()
