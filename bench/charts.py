"""PNG charts of what was measured (matplotlib, Agg): drawn from the figures' results."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

from bench.common import MIB

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from bench.common import Run

Json = dict[str, Any]
BUSY_ZOOM_S: Final = 5.0  # the busy guest's goal: converged within 5 s


def draw(run: Run) -> list[Path]:
    """Draw every chart whose data this run has; return the files written."""
    run.settings.out.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, chart in (
        ("throughput", _throughput),
        ("downtime", _downtime),
        ("convergence", _convergence),
        ("iterations", _iterations),
        ("busy", _busy),
        ("scale", _scale),
    ):
        figure = chart(run.results)
        if figure is None:
            continue
        path = run.settings.png_path(name)
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        drawn.append(path)
    return drawn


def _spread(value: Json) -> tuple[float, float, float]:
    return tuple(_nan(value.get(key)) for key in ("median", "low", "high"))  # type: ignore[return-value]


def _nan(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _errorbar(ax: Axes, xs: list[float], spreads: list[Json], **style: object) -> None:
    mids = [_spread(s)[0] for s in spreads]
    lows = [m - _spread(s)[1] for m, s in zip(mids, spreads, strict=True)]
    highs = [_spread(s)[2] - m for m, s in zip(mids, spreads, strict=True)]
    ax.errorbar(xs, mids, yerr=[lows, highs], capsize=4, marker="o", **style)  # type: ignore[arg-type]


def _legend(ax: Axes, fontsize: int, ncol: int = 1) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, ncol=ncol)


def _size_axis(ax: Axes, sizes: list[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{s:g} MiB" if s < 1024 else f"{s / 1024:g} GiB" for s in sizes])
    ax.set_xlabel("guest RAM")
    ax.set_ylim(bottom=0)
    ax.grid(visible=True, alpha=0.3)


# ---------------------------------------------------------------------------------- charts


def _throughput(results: Json) -> Figure | None:
    idle, zero = results.get("throughput"), results.get("zero_pages")
    if idle is None and zero is None:
        return None
    qemu = results.get("qemu", {})
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    if idle is not None:
        sizes = [float(s) for s in idle["by_size"]]
        _errorbar(
            left,
            sizes,
            [v["throughput_gbps"] for v in idle["by_size"].values()],
            label="livemig (bytes sent / time after setup)",
        )
        wire, low, high = _spread(idle["wire_gbps"])
        left.axhspan(low, high, color="grey", alpha=0.2, label="wire baseline range, same run")
        left.axhline(wire, color="grey", label=f"wire baseline median {wire:.2f} GB/s")
        left.axhline(0.8 * wire, color="red", linestyle="--", label="goal: 0.8 x wire")
        _qemu_line(left, qemu.get("idle"), "QEMU 7.2 TCG, same run")
        _size_axis(left, sizes)
    left.set_ylabel("GB/s")
    left.set_title("Idle VM, random fill: throughput")
    _legend(left, 8)
    if zero is not None:
        sizes = [float(s) for s in zero["by_size"]]
        values = zero["by_size"].values()
        _errorbar(right, sizes, [v["effective_gbps"] for v in values], label="RAM / total time")
        _errorbar(
            right,
            sizes,
            [v["effective_after_setup_gbps"] for v in values],
            label="RAM / (total - setup)",
        )
        right.axhline(8.0, color="red", linestyle="--", label="goal: 8 GB/s")
        _qemu_line(right, qemu.get("zero"), "QEMU 7.2 TCG (RAM / total), same run")
        _size_axis(right, sizes)
    right.set_ylabel("GB/s (effective)")
    right.set_title("Idle VM, zero fill: effective rate")
    _legend(right, 8)
    return figure


def _qemu_line(ax: Axes, side: Json | None, label: str) -> None:
    if not side:
        return
    sizes = [float(s) for s in side["by_size"]]
    _errorbar(
        ax,
        sizes,
        [v["qemu"] for v in side["by_size"].values()],
        label=label,
        color="purple",
        linestyle=":",
    )


def _downtime(results: Json) -> Figure | None:
    data = results.get("downtime")
    if data is None:
        return None
    limits = sorted({g["limit_ms"] for g in data["groups"]}, reverse=True)
    figure, axes = plt.subplots(2, len(limits), figsize=(6.5 * len(limits), 8), squeeze=False)
    for column, limit in enumerate(limits):
        groups = [g for g in data["groups"] if g["limit_ms"] == limit]
        labels = [f"{g['workload']}\n{g['share']:.0%}" for g in groups]
        top, bottom = axes[0][column], axes[1][column]
        values = [g["downtime_ms_all"] or [math.nan] for g in groups]
        top.boxplot(values, whis=(0, 100))
        for index, points in enumerate(values, start=1):
            top.scatter([index] * len(points), points, s=8, alpha=0.5)
        top.axhline(limit, color="red", linestyle="--", label=f"downtime-limit {limit} ms")
        top.set_xticks(range(1, len(labels) + 1), labels)
        top.set_ylabel("downtime (ms)")
        top.set_title(f"Downtime distribution, limit {limit} ms (dirty rate as % of bandwidth)")
        _legend(top, 8)
        bottom_of = [0.0] * len(groups)
        for phase in ("final-ram", "device-state", "load-and-check", "handover"):
            heights = [_finite(g["breakdown_median_ms"].get(phase)) for g in groups]
            bottom.bar(range(len(groups)), heights, bottom=bottom_of, label=phase)
            bottom_of = [b + h for b, h in zip(bottom_of, heights, strict=True)]
        bottom.set_xticks(range(len(groups)), labels)
        bottom.set_ylabel("median (ms)")
        bottom.set_title("Where the downtime goes (medians)")
        _legend(bottom, 8)
    figure.tight_layout()
    return figure


def _finite(value: object) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


def _convergence(results: Json) -> Figure | None:
    data = results.get("convergence")
    if data is None:
        return None
    points = data["points"]
    rs = [p["r"] for p in points]
    done = [p["status"] == "completed" for p in points]
    model_rs = [i / 100 for i in range(int(max(rs) * 100) + 1)]
    ram, bandwidth = data["ram_mib"] * MIB, data["bandwidth_bytes_per_s"]
    from bench.convergence import precopy_model  # noqa: PLC0415 - avoids an import cycle

    model = [precopy_model(ram, bandwidth, r, data["limit_ms"] / 1000) for r in model_rs]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    series: tuple[tuple[str, Callable[[Json], float], str], ...] = (
        ("total time (s)", lambda p: p["total_ms"] / 1000, "total_s"),
        ("dirty syncs / model passes", lambda p: p["dirty_syncs"], "passes"),
        ("bytes sent (GB)", lambda p: p["transferred_bytes"] / 1e9, "bytes"),
    )
    scale = {"total_s": 1.0, "passes": 1.0, "bytes": 1e-9}
    for ax, (label, measured, key) in zip(axes, series, strict=True):
        ys = [measured(p) for p in points]
        ax.plot(
            [r for r, d in zip(rs, done, strict=True) if d],
            [y for y, d in zip(ys, done, strict=True) if d],
            "o",
            label="livemig, completed",
        )
        ax.plot(
            [r for r, d in zip(rs, done, strict=True) if not d],
            [y for y, d in zip(ys, done, strict=True) if not d],
            "x",
            markersize=10,
            color="red",
            label=f"not converged in {data['timeout_s']:g} s (cancelled)",
        )
        ax.plot(
            model_rs, [m[key] * scale[key] for m in model], "-", color="grey", label="precopy model"
        )
        ax.set_xlabel("r = dirty rate / bandwidth")
        ax.set_ylabel(label)
        ax.grid(visible=True, alpha=0.3)
        top = max([y for y in ys if math.isfinite(y)], default=1.0)
        ax.set_ylim(0, top * 1.3)
        _legend(ax, 8)
    figure.suptitle(
        f"Convergence: {data['ram_mib']} MiB ab guest, limit {data['limit_ms']} ms, "
        f"bandwidth {bandwidth / 1e9:.2f} GB/s (measured this run)"
    )
    figure.tight_layout()
    return figure


def _iterations(results: Json) -> Figure | None:
    runs = [
        (f"r={point['r']:.2f}", point["iterations"])
        for point in results.get("convergence", {}).get("points", [])
    ] + [
        (f"busy guest, {case.get('name', str(case['limit_ms']) + ' ms')}", case["iterations"])
        for case in results.get("busy", {}).get("cases", [])
    ]
    runs = [(label, rows) for label, rows in runs if len(rows) > 1]
    if not runs:
        return None
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for label, rows in runs:
        iterations = [row["iteration"] for row in rows]
        top.plot(
            iterations, [row["remaining_bytes"] / MIB for row in rows], marker=".", label=label
        )
        bottom.plot(
            iterations,
            [_nan(row["dirty_bytes_per_s"]) / 1e6 for row in rows],
            marker=".",
            label=label,
        )
        throttled = [row for row in rows if _finite(row.get("throttle_percent")) > 0]
        if throttled:  # where throttling began
            first = throttled[0]
            top.plot(
                [first["iteration"]], [first["remaining_bytes"] / MIB], "v", color="black", ms=9
            )
    top.set_ylabel("remaining after the sync (MiB; \u25bc throttling began)")
    top.set_title("Remaining bytes and dirty rate per iteration (dirty sync)")
    top.set_yscale("symlog")
    bottom.set_ylabel("newly dirtied (MB/s, estimated)")
    bottom.set_xlabel("dirty sync")
    for ax in (top, bottom):
        ax.grid(visible=True, alpha=0.3)
        _legend(ax, 7, ncol=2)
    return figure


def _busy(results: Json) -> Figure | None:
    """The busy guest under each throttle: remaining bytes, dirty rate and throttle per pass."""
    data: Json = results.get("busy") or {}
    runs = _busy_runs(data) if data else []
    if not runs:
        return None
    figure, grid = plt.subplots(3, 2, figsize=(14, 10), sharex="col", width_ratios=(3, 2))
    panels: tuple[tuple[str, Callable[[Json], float]], ...] = (
        ("remaining after the sync (MiB)", lambda row: _nan(row["remaining_bytes"]) / MIB),
        ("newly dirtied (MB/s, estimated)", lambda row: _nan(row["dirty_bytes_per_s"]) / 1e6),
        ("vCPU throttle (%; 100: dirty limit)", lambda row: _nan(row.get("throttle_percent"))),
    )
    for label, rows in runs:
        seconds = [row["t_s"] for row in rows]
        began = next((r["t_s"] for r in rows if _finite(r.get("throttle_percent")) > 0), None)
        for ax, (_, value) in zip(grid.flat, [p for p in panels for _ in (0, 1)], strict=True):
            (line,) = ax.plot(seconds, [value(row) for row in rows], marker=".", label=label)
            if began is not None:
                ax.axvline(began, color=line.get_color(), linestyle=":", alpha=0.7)
    for axes_row, (ylabel, _) in zip(grid, panels, strict=True):
        axes_row[0].set_ylabel(ylabel)
    for ax in grid.flat:
        ax.grid(visible=True, alpha=0.3)
        ax.set_ylim(bottom=0)
    for ax in grid[:, 1]:  # left: the whole migrations; right: the first seconds
        ax.set_xlim(0, BUSY_ZOOM_S)
    grid[0, 0].set_title(
        f"Busy guest ({data['ram_mib']} MiB ab, {data['sweeps_per_s']} sweeps/s), at each "
        "dirty sync; dotted: throttling began"
    )
    grid[0, 1].set_title(f"the first {BUSY_ZOOM_S:g} s")
    for ax in grid[-1]:
        ax.set_xlabel("seconds since migrate")
    _legend(grid[0, 0], 8)
    return figure


def _busy_runs(data: Json) -> list[tuple[str, list[Json]]]:
    """The throttled cases' per-pass rows, and QEMU's when it ran."""
    runs = [
        (case["name"], case["iterations"])
        for case in data["cases"]
        if case.get("capabilities") and len(case["iterations"]) > 1
    ]
    qemu = data.get("qemu_auto_converge")
    if qemu is not None and len(qemu.get("iterations", [])) > 1:
        runs.append(("QEMU 7.2 auto-converge", qemu["iterations"]))
    return runs


def _scale(results: Json) -> Figure | None:
    data = results.get("scale")
    if data is None or not data["points"]:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    points = data["points"]
    rams = sorted({p["ram_mib"] for p in points})
    for side, marker in (("source", "o"), ("dest", "s")):
        left.plot(
            [p["ram_mib"] for p in points],
            [p[f"{side}_peak_rss_mib"] for p in points],
            marker,
            label=f"{side} daemon, peak RSS",
        )
        right.plot(
            [p["ram_mib"] for p in points],
            [p[f"{side}_cpu_s_per_gib"] for p in points],
            marker,
            label=side,
        )
    base = max(data["base_rss_bytes"].values()) / MIB
    left.plot(rams, [r + base for r in rams], "-", color="grey", label="guest RAM + constant")
    left.plot(
        rams, [1.1 * r + base for r in rams], "--", color="red", label="goal: RAM x 1.1 + constant"
    )
    left.set_ylabel("MiB")
    left.set_title("Daemon memory against guest RAM")
    right.set_ylabel("CPU seconds per GiB migrated")
    right.set_title("CPU cost (whole migration, incl. setup)")
    for ax in (left, right):
        _size_axis(ax, rams)
        _legend(ax, 8)
    return figure
