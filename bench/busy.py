"""The busy guest: an ab guest that rewrites all of its RAM many times a second.

QEMU 7.2 on this machine (../shared/reference/this-machine.md): a 1 GiB guest rewriting its RAM
46 times a second never converges at 300 ms; auto-converge gets it there in 13.7-21.9 s after
sending 28-29 GB, with 197-245 ms of downtime; a 1000 ms limit takes 1.4-2.4 s. When QEMU is
installed, its auto-converge migration of the same guest runs in this figure, side by side.

Cases, all at a 300 ms limit unless named: precopy alone (300 and 1000 ms), auto-converge with
QEMU's defaults (20 % first, 10 more every second high period), auto-converge starting at 99 %
(`cpu-throttle-initial` 99: the guest is far beyond the link, so the first step should be the
last), the same deciding every half second (`x-throttle-trigger-period` 500: QEMU's one-second
periods let a 2 GB/s link send 4 GB before the second high period closes), and dirty-limit at
QEMU's default of 1 MB/s per vCPU, with both periods. Each reports its outcome, time,
bytes, downtime, when throttling began, and the cost users pay: the guest work lost to
throttling (ticks an unthrottled guest would have run in the same time, in seconds of guest
time). Every completed migration is checked against a replay that never moved or slowed.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench import qemu
from bench.common import MIB, PAGE, Spread, header, say, table, verdict, warm_memory
from bench.harness import Migration, Pair, VmSpec, busy_row, per_iteration

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bench.common import Run

QEMU_REFERENCE: Final = {
    "ram_mib": 1024,
    "sweeps_per_s": 46,
    "limit_300_ms": "never converges (expected downtime 506-545 ms, ~2.0 GB/s)",
    "auto_converge": {"total_s": "13.7-21.9", "sent_gb": "28-29", "downtime_ms": "197-245"},
    "limit_1000_ms": {"total_s": "1.4-2.4", "downtime_ms": "330-1300"},
}
GOAL_TOTAL_S: Final = 5.0
GOAL_SENT_GB: Final = 5.0
QEMU_PERIOD_CASE: Final = "auto-converge, initial 99 %"
GOAL_CASE: Final = "auto-converge, initial 99 %, 0.5 s periods"
HALF_SECOND: Final = {"x-throttle-trigger-period": 500}
Row = dict[str, object]


@dataclass(frozen=True, kw_only=True)
class Case:
    """One way of migrating the busy guest."""

    name: str
    limit_ms: int = 300
    capabilities: tuple[str, ...] = ()
    parameters: Mapping[str, object] = field(default_factory=dict)
    timeout_s: float = 30.0
    repeats: int = 1


def cases(run: Run) -> list[Case]:
    """The cases of this run (quick mode: smaller guest, fewer and shorter runs)."""
    repeats = run.pick(3, 1)
    found = [
        Case(name="precopy", timeout_s=run.pick(30.0, 4.0)),
        Case(name="precopy, 1000 ms", limit_ms=1000, timeout_s=run.pick(30.0, 4.0)),
        Case(
            name="auto-converge, QEMU defaults",
            capabilities=("auto-converge",),
            timeout_s=60.0,
        ),
        Case(
            name=QEMU_PERIOD_CASE,
            capabilities=("auto-converge",),
            parameters={"cpu-throttle-initial": 99},
            timeout_s=run.pick(30.0, 10.0),
            repeats=repeats,
        ),
        Case(
            name=GOAL_CASE,
            capabilities=("auto-converge",),
            parameters={"cpu-throttle-initial": 99, **HALF_SECOND},
            timeout_s=run.pick(30.0, 10.0),
            repeats=repeats,
        ),
        Case(
            name="dirty-limit, 1 MB/s",
            capabilities=("dirty-limit",),
            timeout_s=run.pick(30.0, 10.0),
            repeats=repeats,
        ),
        Case(
            name="dirty-limit, 1 MB/s, 0.5 s periods",
            capabilities=("dirty-limit",),
            parameters=HALF_SECOND,
            timeout_s=run.pick(30.0, 10.0),
            repeats=repeats,
        ),
    ]
    full_only = {"auto-converge, QEMU defaults", QEMU_PERIOD_CASE, "dirty-limit, 1 MB/s"}
    return [c for c in found if not (run.quick and c.name in full_only)]


def busy(run: Run) -> dict[str, object]:
    ram_mib = run.pick(1024, 256)
    sweeps = run.pick(46, 20)
    rate = sweeps * ram_mib * MIB // PAGE
    header(f"Busy guest: {ram_mib} MiB ab guest rewriting all its RAM {sweeps}x/s ({rate:,}/s)")
    vm = VmSpec(ram_mib=ram_mib, workload="ab", dirty_rate=rate)
    results: list[CaseResult] = []
    for case in cases(run):
        runs = [_migrate(run, vm, case) for _ in range(case.repeats)]
        results.append(_summarize(case, runs))
        say(f"    {case.name}: {_progress(runs)}")
    theirs = _qemu_auto_converge(run, ram_mib)
    _print(results, theirs)
    by_name = {r.name: r for r in results}
    return {
        "ram_mib": ram_mib,
        "sweeps_per_s": sweeps,
        "cases": results,
        "qemu_auto_converge": theirs,
        "qemu_reference": QEMU_REFERENCE,
        "goals": {
            "auto_converge_within_5_s_5_gb_300_ms": _goal(by_name.get(GOAL_CASE)),
            "same_with_qemus_one_second_periods": _goal(by_name.get(QEMU_PERIOD_CASE)),
        },
    }


def _migrate(run: Run, vm: VmSpec, case: Case) -> Row:
    warm_memory(2 * vm.ram_bytes + 512 * MIB)
    with Pair(vm, log_dir=run.settings.out / "logs") as pair:
        migration = pair.migrate(
            parameters={"downtime-limit": case.limit_ms, **case.parameters},
            capabilities=case.capabilities,
            timeout_s=case.timeout_s,
            sample_every_s=0.1,
        )
        replay_ok = pair.replay_matches() if migration.completed else None
    return {
        **busy_row(migration, case.timeout_s),
        "throttle_started_at_pass": migration.info.get("x-throttle-started-at-pass"),
        "guest_s_lost": _lost_guest_s(migration, vm),
        "replay_matches": replay_ok,
        "iterations": _per_pass(migration),
    }


def _lost_guest_s(migration: Migration, vm: VmSpec) -> float:
    """Guest time lost to throttling: ticks an unthrottled guest had run, at its tick rate."""
    ticks = migration.info.get("x-guest-ticks-throttled")
    return float(ticks) / vm.tick_hz if isinstance(ticks, int | float) else 0.0


def _per_pass(migration: Migration) -> list[dict[str, float]]:
    """`per_iteration` rows with the throttle in force at each pass (for the chart)."""
    rows = per_iteration(migration.samples)
    throttle_by_pass: dict[float, float] = {}
    for _, info in migration.samples:
        ram = info.get("ram")
        if isinstance(ram, dict) and "dirty-sync-count" in ram:
            percent = info.get("cpu-throttle-percentage")
            limited = "dirty-limit-ring-full-time" in info
            throttle_by_pass.setdefault(
                float(ram["dirty-sync-count"]),
                float(percent) if isinstance(percent, int) else (100.0 if limited else 0.0),
            )
    for row in rows:
        row["throttle_percent"] = throttle_by_pass.get(row["iteration"], math.nan)
    return rows


@dataclass(kw_only=True)
class CaseResult:
    """One case's runs and their spreads (completed runs only)."""

    name: str
    limit_ms: int
    capabilities: list[str]
    parameters: dict[str, object]
    timeout_s: float
    completed: int
    runs_total: int
    total_s: Spread
    sent_gb: Spread
    downtime_ms: Spread
    throttle_started_at_pass: Spread
    guest_s_lost: Spread
    replay_matches: bool | None
    iterations: list[dict[str, float]]  # the first run's passes (charted); all are in `runs`
    runs: list[Row]


def _summarize(case: Case, runs: list[Row]) -> CaseResult:
    completed = [r for r in runs if r["status"] == "completed"]

    def spread(key: str, scale: float = 1.0) -> Spread:
        return Spread.of([_num(r[key]) * scale for r in completed])

    return CaseResult(
        name=case.name,
        limit_ms=case.limit_ms,
        capabilities=list(case.capabilities),
        parameters=dict(case.parameters),
        timeout_s=case.timeout_s,
        completed=len(completed),
        runs_total=len(runs),
        total_s=spread("total_ms", 1e-3),
        sent_gb=spread("transferred_bytes", 1e-9),
        downtime_ms=spread("downtime_ms"),
        throttle_started_at_pass=spread("throttle_started_at_pass"),
        guest_s_lost=spread("guest_s_lost"),
        replay_matches=all(bool(r["replay_matches"]) for r in completed) if completed else None,
        iterations=runs[0]["iterations"],  # type: ignore[arg-type]
        runs=runs,
    )


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _qemu_auto_converge(run: Run, ram_mib: int) -> Row | None:
    """QEMU 7.2's auto-converge on its own ab guest of the same size, in this run."""
    reason = qemu.missing()
    if reason is not None or run.quick:
        say(f"  QEMU auto-converge side by side: skipped ({reason or 'quick mode'})")
        return None
    with tempfile.TemporaryDirectory(prefix="livemig-bench-busy-") as tmp:
        migration = qemu.qemu_migration(
            Path(tmp),
            "ab",
            ram_mib,
            timeout_s=60.0,
            capabilities=("auto-converge",),
            sample_every_s=0.25,
        )
    row: Row = {**busy_row(migration, 60.0), "iterations": _per_pass(migration)}
    return row


def _goal(result: CaseResult | None) -> dict[str, object]:
    """Every run completed within 5 s and 5 GB, downtime within the limit, replay equal."""
    if result is None:
        return {"met": None}
    met = (
        result.completed == result.runs_total
        and result.total_s.high <= GOAL_TOTAL_S
        and result.sent_gb.high <= GOAL_SENT_GB
        and result.downtime_ms.high <= result.limit_ms
        and bool(result.replay_matches)
    )
    return {
        "met": met,
        "case": result.name,
        "total_s_worst": result.total_s.high,
        "sent_gb_worst": result.sent_gb.high,
        "downtime_ms_worst": result.downtime_ms.high,
    }


def _progress(runs: list[Row]) -> str:
    return ", ".join(
        f"{r['status']} {float(str(r['total_ms'])) / 1000:.1f} s "
        f"{float(str(r['transferred_bytes'])) / 1e9:.1f} GB"
        for r in runs
    )


def _print(results: list[CaseResult], theirs: Row | None) -> None:
    rows = [_line(r) for r in results]
    if theirs is not None:
        rows.append(_qemu_line(theirs))
    headers = ["case", "completed", "total s", "GB sent", "downtime ms", "throttle from pass"]
    table([*headers, "guest s lost", "replay"], rows)
    say(f"  QEMU 7.2 reference (this machine): {QEMU_REFERENCE}")
    by_name = {r.name: r for r in results}
    for name in (GOAL_CASE, QEMU_PERIOD_CASE):
        met = _goal(by_name.get(name))["met"]
        say(
            f"  goal: {name} completes in <= {GOAL_TOTAL_S:g} s, sends <= {GOAL_SENT_GB:g} GB, "
            f"downtime <= 300 ms, replay equal, every run: "
            f"{verdict(met if isinstance(met, bool) else None)}"
        )


def _line(result: CaseResult) -> list[str]:
    replay = result.replay_matches
    done = result.completed > 0
    return [
        result.name,
        f"{result.completed}/{result.runs_total}",
        result.total_s.text(".1f") if done else f"> {result.timeout_s:g}",
        result.sent_gb.text(".1f"),
        result.downtime_ms.text(),
        result.throttle_started_at_pass.text(),
        result.guest_s_lost.text(".1f"),
        "-" if replay is None else ("equal" if replay else "DIFFERS"),
    ]


def _qemu_line(row: Row) -> list[str]:
    done = row["status"] == "completed"
    return [
        "QEMU 7.2 auto-converge (this run)",
        "1/1" if done else "0/1",
        f"{_num(row['total_ms']) / 1000:.1f}",
        f"{_num(row['transferred_bytes']) / 1e9:.1f}",
        f"{_num(row['downtime_ms']):.0f}" if done else "-",
        "-",
        "-",
        "-",
    ]
