"""Convergence: total time, iterations and bytes sent against the dirty rate, with the model.

An ab guest (it sweeps its RAM page after page, so every write dirties a new page until it wraps,
as the model assumes) at dirty rates from 0 to above the migration bandwidth measured in this run.
The textbook precopy model: pass i sends what the previous pass let the guest dirty,
V_i = V_(i-1) x r with r = dirty rate / bandwidth, until V_n fits bandwidth x downtime-limit;
total = RAM / bw x (1 - r^(n+1)) / (1 - r), counting the stop-and-copy as the last pass.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from bench.common import PAGE, header, say, table, warm_memory
from bench.harness import Pair, VmSpec, busy_row, per_iteration
from bench.throughput import migration_bandwidth, num

if TYPE_CHECKING:
    from bench.common import Run

LIMIT_MS: Final = 50
MAX_MODEL_PASSES: Final = 1000


def precopy_model(ram_bytes: float, bandwidth: float, r: float, limit_s: float) -> dict[str, float]:
    """Passes, bytes and seconds of the textbook model (infinite when it never converges)."""
    threshold = bandwidth * limit_s
    pending, sent, passes = ram_bytes, 0.0, 0
    while passes < MAX_MODEL_PASSES:
        sent += pending
        passes += 1
        pending = min(ram_bytes, pending * r)
        if pending <= threshold:
            sent += pending  # the stop-and-copy
            return {"passes": passes, "bytes": sent, "total_s": sent / bandwidth}
    return {"passes": math.inf, "bytes": math.inf, "total_s": math.inf}


def convergence(run: Run) -> dict[str, object]:
    header(f"Convergence: ab guest, dirty rate 0 to above the bandwidth, limit {LIMIT_MS} ms")
    bandwidth = migration_bandwidth(run)
    ram_mib = run.pick(1024, 128)
    timeout_s = run.pick(12.0, 3.0)
    shares = run.pick((0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0, 1.25), (0.0, 0.5, 1.25))
    say(f"  bandwidth (idle migration, this run) {bandwidth / 1e9:.2f} GB/s; {ram_mib} MiB guest")
    points = [_point(run, ram_mib, share, bandwidth, timeout_s) for share in shares]
    table(
        ["r", "status", "total s (model)", "passes (model)", "GB sent (model)", "downtime ms"],
        [_table_row(p) for p in points],
    )
    return {
        "bandwidth_bytes_per_s": bandwidth,
        "ram_mib": ram_mib,
        "limit_ms": LIMIT_MS,
        "timeout_s": timeout_s,
        "points": points,
    }


def _table_row(point: dict[str, object]) -> list[str]:
    model = point["model"]
    assert isinstance(model, dict)
    return [
        f"{num(point, 'r'):.2f}",
        str(point["status"]),
        f"{num(point, 'total_ms') / 1000:.2f} ({model['total_s']:.2f})",
        f"{num(point, 'dirty_syncs'):.0f} ({model['passes']:.0f})",
        f"{num(point, 'transferred_bytes') / 1e9:.2f} ({model['bytes'] / 1e9:.2f})",
        f"{num(point, 'downtime_ms'):.0f}",
    ]


def _point(
    run: Run, ram_mib: int, share: float, bandwidth: float, timeout_s: float
) -> dict[str, object]:
    vm = VmSpec(ram_mib=ram_mib, workload="ab", dirty_rate=int(share * bandwidth / PAGE))
    warm_memory(2 * vm.ram_bytes + 512 * 1024 * 1024)
    with Pair(vm, log_dir=run.settings.out / "logs") as pair:
        migration = pair.migrate(
            parameters={"downtime-limit": LIMIT_MS}, timeout_s=timeout_s, sample_every_s=0.02
        )
    point: dict[str, object] = {
        "r": share,
        "dirty_rate": vm.dirty_rate,
        **busy_row(migration, timeout_s),
        "model": precopy_model(vm.ram_bytes, bandwidth, share, LIMIT_MS / 1000.0),
        "iterations": per_iteration(migration.samples),
    }
    say(
        f"    r={share:.2f}: {point['status']}, {point['total_ms']:.0f} ms, "
        f"{point['dirty_syncs']:.0f} syncs"
    )
    return point
