"""Downtime: its distribution per workload, dirty rate and downtime limit, and where it goes.

For each workload (ab, random, hotset) and dirty rate (a share of the migration bandwidth measured
in this run), one pair of daemons migrates the VM back and forth, alternating the two downtime
limits. The baseline is the limit itself: p99 must stay within it. The breakdown splits each
downtime into final RAM, device state, load-and-check (destination) and handover (resume), and
each cell reports the rate its stop-and-copy moved the final RAM at, next to the bandwidth the
switchover was planned with.

A cell whose p99 misses its limit is migrated again with what a user can do about it: plan the
switchover with a lower `avail-switchover-bandwidth` (REMEDY_SWITCHOVER_SHARE of the bandwidth:
the slowest stop-and-copy rate measured for scattered pages), with auto-converge as the
backstop for the migrations that then do not converge on their own.
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Final

from bench.common import PAGE, Spread, header, percentile, say, table, verdict, warm_memory
from bench.harness import Migration, Pair, VmSpec
from bench.throughput import migration_bandwidth

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bench.common import Run

WORKLOADS: Final = ("ab", "random", "hotset")
SHARES: Final = (0.1, 0.3, 0.6)
LIMITS_MS: Final = (300, 50)
PHASES: Final = ("final-ram", "device-state", "load-and-check", "handover")
CONVERGE_TIMEOUT_S: Final = 8.0
REMEDY_SWITCHOVER_SHARE: Final = 0.375
"""A stop-and-copy of scattered pages moved at 0.68-1.4 GB/s against 2.0 GB/s for an idle
migration in the same run (random guest at 60 %, 50 ms limit; 2026-12-03)."""

Row = dict[str, object]


def downtime(run: Run) -> dict[str, object]:
    header("Downtime: ab / random / hotset at 10/30/60 % of the bandwidth, limits 300 and 50 ms")
    bandwidth = migration_bandwidth(run)
    ram_mib, n = run.pick(256, 64), run.pick(20, 2)
    say(
        f"  bandwidth (idle migration, this run) {bandwidth / 1e9:.2f} GB/s = "
        f"{bandwidth / PAGE:,.0f} pages/s; {ram_mib} MiB guest; {n} migrations per cell"
    )
    rows: list[Row] = []
    for workload in WORKLOADS:
        for share in SHARES:
            rate = int(share * bandwidth / PAGE)
            vm = VmSpec(ram_mib=ram_mib, workload=workload, dirty_rate=rate)
            rows += [{"share": share, **row} for row in _cell(run, vm, n)]
            cell = [r for r in rows if r["workload"] == workload and r["share"] == share]
            say(f"    {workload} at {share:.0%} ({rate:,} writes/s): {_progress(cell)}")
    groups = [
        _summarize(rows, workload, share, limit)
        for workload in WORKLOADS
        for share in SHARES
        for limit in LIMITS_MS
    ]
    _print(groups)
    worst = max(groups, key=lambda g: _num(g["p99_ms"]) / _num(g["limit_ms"]))
    remedies = [_remedy(run, g, bandwidth, ram_mib, n) for g in groups if not g["p99_within_limit"]]
    return {
        "bandwidth_bytes_per_s": bandwidth,
        "ram_mib": ram_mib,
        "groups": groups,
        "remedies": remedies,
        "runs": rows,
        "goals": {
            "p99_within_limit": {
                "met": all(bool(g["p99_within_limit"]) for g in groups),
                "cells_met": sum(bool(g["p99_within_limit"]) for g in groups),
                "cells": len(groups),
                "worst": {k: worst[k] for k in ("workload", "share", "limit_ms", "p99_ms")},
            }
        },
    }


def _remedy(run: Run, group: Row, bandwidth: float, ram_mib: int, n: int) -> Row:
    """The missed cell again, at its limit only, planned conservatively with auto-converge."""
    limit = int(_num(group["limit_ms"]))
    planned = int(REMEDY_SWITCHOVER_SHARE * bandwidth)
    share = _num(group["share"])
    vm = VmSpec(
        ram_mib=ram_mib, workload=str(group["workload"]), dirty_rate=int(_num(group["dirty_rate"]))
    )
    rows = _cell(
        run,
        vm,
        n,
        limits_ms=(limit,),
        parameters={"avail-switchover-bandwidth": planned},
        capabilities=("auto-converge",),
    )
    summary = _summarize([{"share": share, **r} for r in rows], vm.workload, share, limit)
    totals = [_num(r["total_ms"]) for r in rows if r["status"] == "completed"]
    summary |= {
        "avail_switchover_bandwidth": planned,
        "capabilities": ["auto-converge"],
        "total_ms": Spread.of(totals),
    }
    say(
        f"  remedy for {vm.workload} at {share:.0%}, {limit} ms: "
        f"avail-switchover-bandwidth {planned / 1e9:.2f} GB/s + auto-converge: "
        f"{summary['completed']}/{summary['runs']} done, p50 {_num(summary['p50_ms']):.0f}, "
        f"p99 {_num(summary['p99_ms']):.0f}, over {summary['exceeded']}, total "
        f"{Spread.of(totals).median / 1000:.1f} s (median): "
        f"{verdict(bool(summary['p99_within_limit']))}"
    )
    return summary


def _cell(
    run: Run,
    vm: VmSpec,
    n: int,
    *,
    limits_ms: tuple[int, ...] = LIMITS_MS,
    parameters: Mapping[str, object] | None = None,
    capabilities: tuple[str, ...] = (),
) -> list[Row]:
    """n migrations per limit, alternating limits; a limit that once did not converge in
    CONVERGE_TIMEOUT_S is not tried again in this cell (it is reported as not converging)."""
    warm_memory(3 * vm.ram_bytes)
    rows = []
    given_up: set[int] = set()
    with Pair(vm, log_dir=run.settings.out / "logs") as pair:
        for index in range(n):
            for limit in limits_ms:
                if limit in given_up:
                    continue
                migration = pair.migrate(
                    parameters={"downtime-limit": limit, **(parameters or {})},
                    capabilities=capabilities,
                    timeout_s=run.pick(CONVERGE_TIMEOUT_S, 4.0),
                    sample_every_s=0.05,
                )
                rows.append(_row(vm, limit, index, migration))
                if not migration.completed:
                    given_up.add(limit)
    return rows


def _row(vm: VmSpec, limit: int, index: int, migration: Migration) -> Row:
    writes = [
        float(ram["x-page-writes-per-second"])
        for _, info in migration.samples
        if isinstance(ram := info.get("ram"), dict) and "x-page-writes-per-second" in ram
    ]
    return {
        "workload": vm.workload,
        "dirty_rate": vm.dirty_rate,
        "limit_ms": limit,
        "index": index,
        "status": migration.status,
        "downtime_ms": migration.ms("downtime"),
        "total_ms": migration.ms("total-time"),
        "setup_ms": migration.ms("setup-time"),
        "iterations": migration.info.get("x-iterations"),
        "downtime_bytes": migration.ram("downtime-bytes"),
        "final_ram_gbps": _final_ram_gbps(migration),
        "transferred_bytes": migration.ram("transferred"),
        "achieved_writes_per_s": statistics.median(writes) if writes else math.nan,
        "breakdown_ms": migration.breakdown,
    }


def _final_ram_gbps(migration: Migration) -> float:
    """GB/s the stop-and-copy moved the last RAM at (downtime bytes over the final-ram phase)."""
    final_ms = migration.breakdown.get("final-ram")
    downtime_bytes = migration.ram("downtime-bytes")
    if not final_ms or math.isnan(downtime_bytes):
        return math.nan
    return downtime_bytes / (final_ms / 1000) / 1e9


def _progress(rows: list[Row]) -> str:
    parts = []
    for limit in LIMITS_MS:
        mine = [r for r in rows if r["limit_ms"] == limit]
        values = [_num(r["downtime_ms"]) for r in mine if r["status"] == "completed"]
        stuck = len(mine) - len(values)
        note = f", did not converge in {CONVERGE_TIMEOUT_S:g} s: gave up" if stuck else ""
        parts.append(
            f"{limit} ms: {len(values)} done, max {max(values, default=math.nan):.0f}{note}"
        )
    return ", ".join(parts)


def _summarize(rows: list[Row], workload: str, share: float, limit: int) -> Row:
    cell = [
        r
        for r in rows
        if r["workload"] == workload and r["share"] == share and r["limit_ms"] == limit
    ]
    done = [r for r in cell if r["status"] == "completed"]
    times = [_num(r["downtime_ms"]) for r in done]
    excess = [t - limit for t in times if t > limit]
    p99 = percentile(times, 99)
    return {
        "workload": workload,
        "share": share,
        "dirty_rate": cell[0]["dirty_rate"] if cell else math.nan,
        "limit_ms": limit,
        "runs": len(cell),
        "completed": len(done),
        "p50_ms": percentile(times, 50),
        "p99_ms": p99,
        "max_ms": max(times, default=math.nan),
        "exceeded": len(excess),
        "excess_max_ms": max(excess, default=0.0),
        "excess_median_ms": statistics.median(excess) if excess else 0.0,
        "not_converged": len(cell) - len(done),
        "p99_within_limit": bool(done) and len(done) == len(cell) and p99 <= limit,
        "breakdown_median_ms": {
            phase: statistics.median(_num(r["breakdown_ms"].get(phase)) for r in done)  # type: ignore[attr-defined]
            if done
            else math.nan
            for phase in PHASES
        },
        "achieved_writes_per_s": Spread.of([_num(r["achieved_writes_per_s"]) for r in cell]),
        "final_ram_gbps": Spread.of([_num(r["final_ram_gbps"]) for r in done]),
        "downtime_ms_all": times,
    }


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _print(groups: list[Row]) -> None:
    table(
        [
            "workload",
            "rate",
            "limit",
            "done",
            "p50",
            "p99",
            "max",
            "over limit (max excess)",
            "final-ram/device/load/handover",
            "final RAM GB/s",
            "goal",
        ],
        [
            [
                g["workload"],
                f"{_num(g['share']):.0%}",
                f"{g['limit_ms']} ms",
                f"{g['completed']}/{g['runs']}" + (" gave up" if g["not_converged"] else ""),
                f"{_num(g['p50_ms']):.0f}",
                f"{_num(g['p99_ms']):.0f}",
                f"{_num(g['max_ms']):.0f}",
                f"{g['exceeded']} (+{_num(g['excess_max_ms']):.0f} ms)",
                "/".join(f"{v:.0f}" for v in g["breakdown_median_ms"].values()),  # type: ignore[attr-defined]
                g["final_ram_gbps"].text(".2f"),  # type: ignore[attr-defined]
                verdict(bool(g["p99_within_limit"])),
            ]
            for g in groups
        ],
    )
