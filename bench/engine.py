"""Engine: this checkout's daemons against another checkout's, measured in the same run.

``python -m bench engine --baseline DIR`` (DIR: e.g. a `git worktree` of the commit before a
change). The two codes take turns, repetition by repetition, so both see the machine's
conditions of the moment (loopback swings by tens of percent within seconds here):

- throughput: an idle VM with random RAM migrated between fresh daemons (bytes sent / (total -
  setup)), the figure `python -m bench throughput` reports;
- downtime: a busy VM (random writes at a share of the measured bandwidth) migrated back and
  forth with a 300 ms and a 50 ms limit, as `python -m bench downtime` does, in rounds of fresh
  daemons that take turns too.

It prints each side's median and range and the ratio of the medians (new / baseline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from bench.common import MIB, PAGE, Spread, gbps, header, say, warm_memory
from bench.harness import Pair, VmSpec

if TYPE_CHECKING:
    from pathlib import Path

    from bench.common import Run

SIDES: Final = ("new", "baseline")
LIMITS_MS: Final = (300, 50)
BUSY_SHARE: Final = 0.3


def engine(run: Run) -> dict[str, object]:
    header("Engine: this checkout against a baseline checkout, taking turns in one run")
    baseline = run.settings.baseline_tree
    if baseline is None:
        say("  skipped: no --baseline DIR given (a checkout of the code to compare with)")
        return {"skipped": "no baseline tree"}
    trees: dict[str, Path | None] = {"new": None, "baseline": baseline}
    ram_mib, reps = run.pick(1024, 256), run.pick(5, 2)
    throughput = {side: [] for side in SIDES}  # type: dict[str, list[float]]
    for rep in range(reps):
        for side in SIDES if rep % 2 == 0 else reversed(SIDES):
            rate = _throughput(run, VmSpec(ram_mib=ram_mib), trees[side])
            throughput[side].append(rate)
            say(f"  throughput rep {rep + 1}/{reps} {side:>8}: {rate:.2f} GB/s")
    bandwidth = Spread.of(throughput["new"] + throughput["baseline"]).median * 1e9
    rate = int(BUSY_SHARE * bandwidth / PAGE)
    busy = VmSpec(ram_mib=run.pick(256, 64), workload="random", dirty_rate=rate)
    downtime: dict[str, dict[int, list[float]]] = {s: {lim: [] for lim in LIMITS_MS} for s in SIDES}
    rounds = run.pick(3, 1)
    for index in range(rounds):  # fresh daemons per round, the two codes taking turns
        for side in SIDES if index % 2 == 0 else reversed(SIDES):
            for limit, values in _downtimes(run, busy, trees[side], run.pick(8, 2)).items():
                downtime[side][limit] += values
            done = len(downtime[side][LIMITS_MS[0]])
            say(f"  downtime round {index + 1}/{rounds} {side:>8}: {done} migrations so far")
    result = {
        "ram_mib": ram_mib,
        "baseline_tree": str(baseline),
        "throughput_gbps": {side: Spread.of(v) for side, v in throughput.items()},
        "downtime_ms": {
            side: {str(limit): Spread.of(values) for limit, values in by_limit.items()}
            for side, by_limit in downtime.items()
        },
        "busy_writes_per_s": rate,
    }
    _print(result)
    return result


def _throughput(run: Run, vm: VmSpec, tree: Path | None) -> float:
    warm_memory(2 * vm.ram_bytes + 512 * MIB)
    with Pair(vm, log_dir=run.settings.out / "logs", code_tree=tree) as pair:
        migration = pair.migrate(timeout_s=120.0)
    if not migration.completed:
        return float("nan")
    return gbps(migration.ram("transferred"), migration.transfer_s)


def _downtimes(run: Run, vm: VmSpec, tree: Path | None, n: int) -> dict[int, list[float]]:
    warm_memory(3 * vm.ram_bytes)
    values: dict[int, list[float]] = {limit: [] for limit in LIMITS_MS}
    with Pair(vm, log_dir=run.settings.out / "logs", code_tree=tree) as pair:
        for _ in range(n):
            for limit in LIMITS_MS:
                migration = pair.migrate(parameters={"downtime-limit": limit}, timeout_s=8.0)
                if migration.completed:
                    values[limit].append(migration.ms("downtime"))
                pair.wait_vm_running()
    return values


def _print(result: dict[str, object]) -> None:
    rates = result["throughput_gbps"]
    assert isinstance(rates, dict)
    new, old = rates["new"], rates["baseline"]
    say(
        f"  throughput: new {new.text('.2f')} GB/s, baseline {old.text('.2f')} GB/s, "
        f"ratio of medians {new.median / old.median:.2f}"
    )
    downtime = result["downtime_ms"]
    assert isinstance(downtime, dict)
    for limit in LIMITS_MS:
        new_d, old_d = downtime["new"][str(limit)], downtime["baseline"][str(limit)]
        say(
            f"  downtime, limit {limit} ms: new {new_d.text('.0f')} ms, "
            f"baseline {old_d.text('.0f')} ms, ratio of medians {new_d.median / old_d.median:.2f}"
        )
