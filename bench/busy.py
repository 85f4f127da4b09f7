"""The busy guest: an ab guest that rewrites all of its RAM many times a second.

QEMU 7.2 on this machine (../shared/reference/this-machine.md; the qemu figure re-measures it
when QEMU is installed): a 1 GiB guest rewriting its RAM 46 times a second never converges at
300 ms; auto-converge gets it there in 13.7 s after sending 28.9 GB, with 245 ms of downtime; a
1000 ms limit takes 1.4-2.4 s. This figure is what livemig's next convergence features will be
judged by: whether and how it completes, total time, bytes sent and downtime.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from bench.common import MIB, PAGE, header, say, table, warm_memory
from bench.harness import Pair, VmSpec, busy_row, per_iteration

if TYPE_CHECKING:
    from bench.common import Run

QEMU_REFERENCE: Final = {
    "ram_mib": 1024,
    "sweeps_per_s": 46,
    "limit_300_ms": "never converges (expected downtime 506-545 ms, ~2.0 GB/s)",
    "auto_converge": {"total_s": 13.7, "sent_gb": 28.9, "downtime_ms": 245},
    "limit_1000_ms": {"total_s": "1.4-2.4", "downtime_ms": "330-1300"},
}


def busy(run: Run) -> dict[str, object]:
    ram_mib = run.pick(1024, 256)
    sweeps = run.pick(46, 20)
    rate = sweeps * ram_mib * MIB // PAGE
    header(f"Busy guest: {ram_mib} MiB ab guest rewriting all its RAM {sweeps}x/s ({rate:,}/s)")
    cases = []
    for limit_ms in (300, 1000):
        timeout_s = run.pick(30.0, 4.0)
        vm = VmSpec(ram_mib=ram_mib, workload="ab", dirty_rate=rate)
        warm_memory(2 * vm.ram_bytes + 512 * MIB)
        with Pair(vm, log_dir=run.settings.out / "logs") as pair:
            migration = pair.migrate(
                parameters={"downtime-limit": limit_ms}, timeout_s=timeout_s, sample_every_s=0.1
            )
        cases.append(
            {
                "limit_ms": limit_ms,
                **busy_row(migration, timeout_s),
                "iterations": per_iteration(migration.samples),
            }
        )
    table(
        ["limit", "outcome", "total s", "GB sent", "downtime ms", "syncs", "expected downtime"],
        [
            [
                f"{c['limit_ms']} ms",
                c["status"] if c["status"] == "completed" else f"{c['status']} at the timeout",
                _fmt(c["total_ms"], 1e-3, ".1f"),
                _fmt(c["transferred_bytes"], 1e-9, ".1f"),
                _fmt(c["downtime_ms"]),
                _fmt(c["dirty_syncs"]),
                _fmt(c["expected_downtime_ms"]),
            ]
            for c in cases
        ],
    )
    say(f"  QEMU 7.2 reference (this machine): {QEMU_REFERENCE}")
    return {"ram_mib": ram_mib, "sweeps_per_s": sweeps, "cases": cases, "qemu": QEMU_REFERENCE}


def _fmt(value: object, scale: float = 1.0, spec: str = ".0f") -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "-"
    return f"{value * scale:{spec}}"
