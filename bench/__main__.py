"""``python -m bench all [--quick] [--out DIR]``, or one figure: ``python -m bench downtime``.

Every figure prints its numbers next to a baseline measured in the same run, writes
``OUT/<figure>.json``, and ``OUT/*.png`` charts are drawn from what was measured.
``all`` also writes ``OUT/summary.json`` (goals, run times).
"""

from __future__ import annotations

import argparse
import platform
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from bench import (
    busy,
    charts,
    convergence,
    downtime,
    engine,
    fills,
    links,
    micro,
    multifd,
    postcopy,
    qemu,
    resume,
    scrape_cost,
    throughput,
    tls,
    wire,
)
from bench.common import DEFAULT_OUT, Run, Settings, header, say, to_json, write_json

Figure = Callable[[Run], dict[str, object]]

FIGURES: Final[dict[str, Figure]] = {
    "micro": micro.micro,
    "wire": wire.wire,
    "throughput": throughput.throughput,
    "zero_pages": throughput.zero_pages,
    "scale": throughput.scale,
    "downtime": downtime.downtime,
    "convergence": convergence.convergence,
    "busy": busy.busy,
    "qemu": qemu.qemu,
}
ON_DEMAND: Final[dict[str, Figure]] = {
    "engine": engine.engine,  # needs --baseline
    "metrics": scrape_cost.scrape_cost,  # the cost of serving Prometheus scrapes
    "tls": tls.tls,  # TLS 1.3 migrations against plaintext
    "fills": fills.fills,  # what compression would meet in guest RAM, by fill
    "multifd": multifd.multifd,  # N multifd channels against one stream
    "links": links.links,  # multifd + zstd on a shaped link between network namespaces
    "postcopy": postcopy.postcopy,  # the busy guest switched to postcopy after its first pass
    "resume": resume.resume,  # precopy over a link cut for 2 s mid-pass: resumed, not restarted
}
ALIASES: Final = {"zero": "zero_pages"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "figure", choices=["all", *FIGURES, *ON_DEMAND, *ALIASES], help="what to measure"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few runs (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another checkout (e.g. a git worktree) that the engine figure compares with",
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every daemon and QEMU started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    settings = Settings(out=args.out, quick=args.quick, baseline_tree=args.baseline)
    run = Run(settings=settings)
    name = ALIASES.get(args.figure, args.figure)
    names = list(FIGURES) if name == "all" else [name]
    started = time.perf_counter()
    seconds = {figure: _run_figure(run, figure) for figure in names}
    drawn = charts.draw(run)
    total_s = time.perf_counter() - started
    if name == "all":
        write_json(run.settings, "summary", _summary(run, seconds, total_s))
    header(f"done in {total_s:.0f} s; results in {run.settings.out}")
    for path in drawn:
        say(f"  chart {path}")
    return 0


def _run_figure(run: Run, name: str) -> float:
    started = time.perf_counter()
    result = {**FIGURES, **ON_DEMAND}[name](run)
    elapsed = time.perf_counter() - started
    result["seconds"] = elapsed
    write_json(run.settings, name, result)
    run.results[name] = to_json(result)  # type: ignore[assignment]  # a dict stays a dict
    say(f"  ({name}: {elapsed:.0f} s)")
    return elapsed


def _summary(run: Run, seconds: dict[str, float], total_s: float) -> dict[str, object]:
    return {
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "quick": run.quick,
        "machine": {"python": platform.python_version(), "cpus": _cpus(), "node": platform.node()},
        "seconds": {**seconds, "total": total_s},
        "goals": {name: result.get("goals") for name, result in run.results.items()},
    }


def _cpus() -> int:
    import os  # noqa: PLC0415

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
