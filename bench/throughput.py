"""Throughput, zero pages, and scale and cost: idle VMs migrated between fresh daemons.

Each repetition first measures the wire baseline (`bench.wire`), then migrates an idle VM of each
size between two freshly started daemons, so the baseline and the migrations share the machine's
conditions of the moment. Throughput is bytes sent / (total time - setup time): the setup is the
destination allocating and pre-faulting its RAM, reported on its own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from bench import wire
from bench.common import (
    GIB,
    MIB,
    Spread,
    gbps,
    header,
    ratio,
    say,
    table,
    verdict,
    warm_memory,
)
from bench.harness import Pair, VmSpec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bench.common import Run

Row = dict[str, object]

THROUGHPUT_GOAL: Final = 0.8  # of the wire baseline
ZERO_GOAL_GBPS: Final = 8.0
RSS_GOAL_SHARE: Final = 0.10  # of guest RAM, above a daemon with a 4 MiB guest
BASE_RAM_MIB: Final = 4


def sweep(run: Run, *, fill: str, sizes_mib: tuple[int, ...], reps: int) -> list[Row]:
    """Per repetition and size: the wire baseline, then one migration (fresh daemons).

    Loopback swings by tens of percent within seconds here, so each migration is paired with
    a wire measurement taken just before it, and ratios are taken pair by pair.
    """
    wire_bytes = run.pick(GIB, 256 * MIB)
    rows = []
    for rep in range(reps):
        for size in sizes_mib:
            wire_gbps = wire.measure(wire_bytes)
            row = migrate_idle(run, VmSpec(ram_mib=size, fill=fill), wire_gbps)
            row["rep"] = rep
            rows.append(row)
            say(
                f"  rep {rep + 1}/{reps} {size:>5} MiB {fill}: {row['status']}, "
                f"{row['throughput_gbps']:.2f} GB/s (wire just before: {wire_gbps:.2f}), "
                f"setup {row['setup_ms']:.0f} ms, total {row['total_ms']:.0f} ms"
            )
    return rows


def migrate_idle(run: Run, vm: VmSpec, wire_gbps: float) -> Row:
    """One migration of an idle VM between fresh daemons, with usage and RSS."""
    warm_memory(2 * vm.ram_bytes + 512 * MIB)
    # As the wire baseline's receiver, and QEMU's destination (-m, -mem-prealloc): RAM faulted
    # in before the migration starts (this host hands freed memory back: 2 s/GiB to re-touch)
    standby = ("--mem-prealloc", "--ram-mib", str(vm.ram_mib))
    with Pair(vm, log_dir=run.settings.out / "logs", dest_args=standby) as pair:
        boot_rss = pair.usage()[0].rss_bytes
        migration = pair.migrate(timeout_s=120.0)
    source, dest = migration.source_usage, migration.dest_usage
    transferred = migration.ram("transferred")
    total_s = migration.ms("total-time") / 1000.0
    return {
        "fill": vm.fill,
        "ram_mib": vm.ram_mib,
        "status": migration.status,
        "wire_gbps": wire_gbps,
        "total_ms": migration.ms("total-time"),
        "setup_ms": migration.ms("setup-time"),
        "transfer_ms": migration.transfer_s * 1000.0,
        "downtime_ms": migration.ms("downtime"),
        "transferred_bytes": transferred,
        "throughput_gbps": gbps(transferred, migration.transfer_s),
        "effective_gbps": gbps(vm.ram_bytes, total_s),
        "effective_after_setup_gbps": gbps(vm.ram_bytes, migration.transfer_s),
        "ratio_to_wire": ratio(gbps(transferred, migration.transfer_s), wire_gbps),
        "source_cpu_s": migration.source_cpu_s,
        "dest_cpu_s": migration.dest_cpu_s,
        "source_boot_rss_bytes": boot_rss,
        "source_peak_rss_bytes": source.peak_rss_bytes if source else math.nan,
        "dest_peak_rss_bytes": dest.peak_rss_bytes if dest else math.nan,
    }


def by_size(rows: list[Row], key: str) -> dict[int, Spread]:
    sizes = sorted({int(num(r, "ram_mib")) for r in rows})
    return {size: Spread.of([num(r, key) for r in rows if r["ram_mib"] == size]) for size in sizes}


# ---------------------------------------------------------------------------------- figures


def throughput(run: Run) -> dict[str, object]:
    header("Throughput: idle VM, random fill, fresh daemons; wire baseline in the same run")
    sizes = run.pick((256, 1024, 4096), (256,))
    rows = sweep(run, fill="random", sizes_mib=sizes, reps=run.pick(3, 1))
    wire_spread = Spread.of([num(r, "wire_gbps") for r in rows])
    rates, ratios = by_size(rows, "throughput_gbps"), by_size(rows, "ratio_to_wire")
    setups, downtimes = by_size(rows, "setup_ms"), by_size(rows, "downtime_ms")
    summary = {
        size: {
            "throughput_gbps": rates[size],
            "ratio_to_wire": ratios[size],
            "setup_ms": setups[size],
            "downtime_ms": downtimes[size],
            "goal_met": ratios[size].median >= THROUGHPUT_GOAL,
        }
        for size in sizes
    }
    say(f"  wire baseline (plain uvloop pair, 4 MiB buffers): {wire_spread.text('.2f')} GB/s")
    iperf = wire.iperf3(run.pick(3, 1))
    say(f"  iperf3: {'not installed' if iperf is None else f'{iperf:.2f} GB/s'}")
    table(
        ["RAM", "livemig GB/s", "/ wire (paired)", f"goal >= {THROUGHPUT_GOAL}", "setup ms"],
        [
            [
                f"{size} MiB",
                rates[size].text(".2f"),
                ratios[size].text(".2f"),
                verdict(ratios[size].median >= THROUGHPUT_GOAL),
                setups[size].text(),
            ]
            for size in sizes
        ],
    )
    goals = {
        f"{size} MiB: throughput >= {THROUGHPUT_GOAL} x wire": {
            "value": ratios[size].median,
            "met": ratios[size].median >= THROUGHPUT_GOAL,
        }
        for size in sizes
    }
    return {
        "wire_gbps": wire_spread,
        "iperf3_gbps": iperf,
        "by_size": summary,
        "goals": goals,
        "runs": rows,
    }


def zero_pages(run: Run) -> dict[str, object]:
    header("Zero pages: idle VM, zero fill; effective rate = RAM size / total time")
    sizes = run.pick((1024, 4096), (256,))
    rows = sweep(run, fill="zero", sizes_mib=sizes, reps=run.pick(3, 1))
    effective, after_setup = (
        by_size(rows, "effective_gbps"),
        by_size(rows, "effective_after_setup_gbps"),
    )
    setups, wires = by_size(rows, "setup_ms"), by_size(rows, "wire_gbps")
    summary = {
        size: {
            "effective_gbps": effective[size],
            "effective_after_setup_gbps": after_setup[size],
            "setup_ms": setups[size],
            "wire_gbps": wires[size],
            "goal_met": effective[size].median >= ZERO_GOAL_GBPS,
            "goal_met_after_setup": after_setup[size].median >= ZERO_GOAL_GBPS,
        }
        for size in sizes
    }
    table(
        ["RAM", "RAM/total GB/s", "RAM/(total-setup)", "setup ms", "wire GB/s", "goal >= 8"],
        [
            [
                f"{size} MiB",
                effective[size].text(".2f"),
                after_setup[size].text(".2f"),
                setups[size].text(),
                wires[size].text(".2f"),
                verdict(effective[size].median >= ZERO_GOAL_GBPS),
            ]
            for size in sizes
        ],
    )
    goals = {
        f"{size} MiB: RAM / total time >= {ZERO_GOAL_GBPS:g} GB/s": {
            "value": effective[size].median,
            "met": effective[size].median >= ZERO_GOAL_GBPS,
            "after_setup": after_setup[size].median,
        }
        for size in sizes
    }
    return {"by_size": summary, "goals": goals, "runs": rows}


def scale(run: Run) -> dict[str, object]:
    header("Scale and cost: daemon RSS against guest RAM, CPU seconds per GiB")
    # Random fill only: a zero-filled source never touches its RAM, so its RSS says nothing.
    rows = _rows_of(run, "throughput")
    if not rows:
        rows = sweep(run, fill="random", sizes_mib=run.pick((256, 1024), (256,)), reps=1)
    base = migrate_idle(run, VmSpec(ram_mib=BASE_RAM_MIB, fill="random"), math.nan)
    base_rss = {
        "source": num(base, "source_peak_rss_bytes") - BASE_RAM_MIB * MIB,
        "dest": num(base, "dest_peak_rss_bytes") - BASE_RAM_MIB * MIB,
    }
    say(
        f"  constant (a daemon with a {BASE_RAM_MIB} MiB guest, less its RAM): source "
        f"{base_rss['source'] / MIB:.0f} MiB, destination {base_rss['dest'] / MIB:.0f} MiB"
    )
    points = [_scale_point(row, base_rss) for row in rows]
    _print_scale(points)
    worst = max(
        (num(p, f"{side}_overhead_share") for p in points for side in ("source", "dest")),
        default=math.nan,
    )
    say(f"  worst overhead {worst:.1%} of guest RAM (goal <= {RSS_GOAL_SHARE:.0%})")
    goal = f"RSS overhead <= {RSS_GOAL_SHARE:.0%} of guest RAM + constant"
    return {
        "base_rss_bytes": base_rss,
        "points": points,
        "goals": {goal: {"value": worst, "met": worst <= RSS_GOAL_SHARE}},
    }


def _rows_of(run: Run, figure: str) -> list[Row]:
    result = run.results.get(figure, {})
    runs = result.get("runs", [])
    return list(runs) if isinstance(runs, list) else []


def _scale_point(row: Row, base_rss: dict[str, float]) -> dict[str, float | str]:
    ram = num(row, "ram_mib") * MIB
    point: dict[str, float | str] = {"fill": str(row["fill"]), "ram_mib": ram / MIB}
    for side in ("source", "dest"):
        peak = num(row, f"{side}_peak_rss_bytes")
        point[f"{side}_peak_rss_mib"] = peak / MIB
        point[f"{side}_overhead_share"] = (peak - ram - base_rss[side]) / ram
        point[f"{side}_cpu_s_per_gib"] = num(row, f"{side}_cpu_s") / (ram / GIB)
    return point


def _print_scale(points: list[dict[str, float | str]]) -> None:
    table(
        ["fill", "RAM MiB", "src peak RSS", "overhead", "dst peak RSS", "overhead", "CPU s/GiB"],
        [
            [
                p["fill"],
                f"{p['ram_mib']:.0f}",
                f"{p['source_peak_rss_mib']:.0f} MiB",
                f"{p['source_overhead_share']:+.1%}",
                f"{p['dest_peak_rss_mib']:.0f} MiB",
                f"{p['dest_overhead_share']:+.1%}",
                f"src {p['source_cpu_s_per_gib']:.2f} dst {p['dest_cpu_s_per_gib']:.2f}",
            ]
            for p in points
        ],
    )


def migration_bandwidth(run: Run) -> float:
    """Bytes/s an idle migration reaches here now (the throughput figure's, else measured)."""
    rows = _rows_of(run, "throughput")
    if not rows:
        rows = sweep(run, fill="random", sizes_mib=(run.pick(1024, 256),), reps=run.pick(2, 1))
    rates = [num(r, "throughput_gbps") for r in rows if r["status"] == "completed"]
    return Spread.of(rates).median * 1e9


def num(row: Mapping[str, object], key: str) -> float:
    value = row[key]
    return float(value) if isinstance(value, int | float) else math.nan
