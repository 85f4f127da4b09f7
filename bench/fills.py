"""Fills: what compression would meet in guest RAM, fill by fill (no daemons, no network).

``python -m bench fills``. Each fill boots a machine in this process and its RAM is measured as
a migration would see it: the share of zero pages (sent as zero pages, never compressed), and
the zlib (level 1, QEMU's `multifd-zlib-level` default) ratio of the other pages, compressed in
packets of 128 pages as a multifd channel sends them. The `random` fill is the incompressible
baseline of the same run; `mixed` is the preset of real files (`vmm/fill_content.py`).
"""

from __future__ import annotations

import time
import zlib
from typing import TYPE_CHECKING, Final

from bench.common import MIB, header, say
from vmm.fill_content import resolve_fill
from vmsim import PAGE_SIZE, Machine

if TYPE_CHECKING:
    import numpy as np

    from bench.common import Run

PACKET_PAGES: Final = 128  # a multifd packet (QEMU's MULTIFD_PACKET_SIZE / page size)
ZLIB_LEVEL: Final = 1
FILLS: Final = ("random", "pattern", "mixed")


def fills(run: Run) -> dict[str, object]:
    header("Fills: zero pages and zlib ratio of guest RAM, by fill")
    ram_mib = run.pick(256, 16)
    results = {}
    for fill in FILLS:
        started = time.perf_counter()
        config, content = resolve_fill({"ram_mib": ram_mib, "fill": fill, "workload": "idle"})
        machine = Machine.boot(config, content)
        boot_s = time.perf_counter() - started
        results[fill] = _measure(machine.ram.array.reshape(-1, PAGE_SIZE)) | {"boot_s": boot_s}
        figures = results[fill]
        say(
            f"  {fill:>8}: {figures['zero_share']:.1%} zero pages, zlib-{ZLIB_LEVEL} ratio of the "
            f"others {figures['zlib_ratio']:.2f} at {figures['zlib_mb_per_s']:.0f} MB/s "
            f"(boot {boot_s:.1f} s)"
        )
    return {"ram_mib": ram_mib, "packet_pages": PACKET_PAGES, "fills": results}


def _measure(pages: np.ndarray) -> dict[str, float]:
    zero = ~pages.any(axis=1)
    data = pages[~zero]
    raw_bytes = compressed_bytes = 0
    started = time.perf_counter()
    for first in range(0, len(data), PACKET_PAGES):
        packet = data[first : first + PACKET_PAGES].tobytes()
        raw_bytes += len(packet)
        compressed_bytes += min(len(packet), len(zlib.compress(packet, ZLIB_LEVEL)))
    seconds = time.perf_counter() - started
    return {
        "zero_share": float(zero.mean()),
        "zlib_ratio": raw_bytes / compressed_bytes if compressed_bytes else float("nan"),
        "zlib_mb_per_s": raw_bytes / seconds / MIB if seconds > 0 else float("nan"),
    }
