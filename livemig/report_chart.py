"""The per-pass chart of one migration record (`livemig report --png`), with matplotlib (Agg).

The same view as the benchmark's iterations chart, for one migration: what remained after each
dirty sync, what the guest wrote between syncs and its dirty rate, the bandwidth, and the
throttle; markers where throttling began, where the link broke and precopy resumed, and the
pass after which it switched to postcopy. A record without passes (a migration that failed in
setup, or a destination's record) gets a chart that says so, with the outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

from livemig.report import MIB, ReportError, as_list, as_mapping, status_path

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from matplotlib.axes import Axes

PAGE_BYTES: Final = 4096
MB: Final = 1e6


def draw_report_chart(record: Mapping[str, object], out: Path) -> Path:
    """Draw `record`'s chart into `out` (PNG).

    Raises:
        ReportError: matplotlib is not installed.
    """
    try:
        import matplotlib as mpl  # noqa: PLC0415 - optional: only `--png` needs it

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        msg = "drawing a chart needs matplotlib: pip install 'livemig[bench]'"
        raise ReportError(msg) from exc
    rows = [row for row in as_list(record.get("passes")) if isinstance(row, dict)]
    if not rows:
        figure, ax = plt.subplots(figsize=(9, 3))
        _no_passes(ax, record)
    else:
        figure, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
        _remaining(axes[0], rows, record)
        _dirtied(axes[1], rows)
        _bandwidth(axes[2], rows)
    figure.suptitle(_title(record), fontsize=11)
    figure.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return out


def _title(record: Mapping[str, object]) -> str:
    figures = as_mapping(record.get("summary"))
    text = f"migration {str(record.get('id'))[:12]} ({record.get('role')}): {record.get('status')}"
    text += f", {figures.get('total_ms')} ms"
    if figures.get("downtime_ms") is not None:
        text += f", downtime {figures['downtime_ms']} ms"
    return text


def _no_passes(ax: Axes, record: Mapping[str, object]) -> None:
    statuses = status_path(as_list(record.get("statuses")))
    why = record.get("error-desc") or ""
    ax.text(0.02, 0.65, f"no dirty sync recorded ({record.get('role')})", fontsize=11)
    ax.text(0.02, 0.40, f"statuses: {statuses}", fontsize=9)
    ax.text(0.02, 0.15, f"{why}"[:140], fontsize=9, color="firebrick")
    ax.set_axis_off()


def _remaining(ax: Axes, rows: list[dict[str, object]], record: Mapping[str, object]) -> None:
    passes = [_num(row.get("pass")) for row in rows]
    ax.plot(
        passes, [_num(row.get("remaining")) / MIB for row in rows], marker=".", label="remaining"
    )
    summary = as_mapping(record.get("summary"))
    _mark(ax, rows, [summary.get("throttle_started_at_pass")], "v", "black", "throttling began")
    breaks = as_list(summary.get("precopy_breaks_at_pass"))
    _mark(ax, rows, breaks, "X", "firebrick", "link broke, resumed (x-precopy-resume-ms)")
    switched = [summary.get("postcopy_after_pass")]
    _mark(ax, rows, switched, "s", "tab:purple", "switched to postcopy after it")
    ax.set_ylabel("remaining after the sync (MiB)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    _style(ax, legend="lower left")


def _mark(
    ax: Axes, rows: list[dict[str, object]], at: list[object], shape: str, color: str, label: str
) -> None:
    """A marker on the remaining curve at each pass of `at` (throttle, breaks, the switch)."""
    marked = [row for row in rows if row.get("pass") in at]
    if marked:
        ax.plot([_num(r.get("pass")) for r in marked],
                [_num(r.get("remaining")) / MIB for r in marked], shape, ms=10, color=color,
                label=label, linestyle="none")  # fmt: skip


def _dirtied(ax: Axes, rows: list[dict[str, object]]) -> None:
    passes = [_num(row.get("pass")) for row in rows[1:]]  # pass 1 finds all of RAM
    ax.bar(passes, [_num(row.get("dirtied-pages")) * PAGE_BYTES / MB for row in rows[1:]],
           color="tab:orange", alpha=0.5, label="written since the previous sync (MB)")  # fmt: skip
    ax.plot(passes, [_num(row.get("dirty-pages-rate")) * PAGE_BYTES / MB for row in rows[1:]],
            marker=".", color="tab:red", label="dirty rate (MB/s)")  # fmt: skip
    ax.set_ylabel("guest writes")
    _style(ax)


def _bandwidth(ax: Axes, rows: list[dict[str, object]]) -> None:
    passes = [_num(row.get("pass")) for row in rows]
    ax.plot(passes, [_num(row.get("mbps")) for row in rows], marker=".", label="bandwidth (Mbit/s)")
    ax.set_ylabel("Mbit/s")
    ax.set_xlabel("pass (dirty sync)")
    throttle = [_num(row.get("cpu-throttle-percentage")) for row in rows]
    if any(throttle):
        twin = ax.twinx()
        # a sample holds the throttle of the pass that its sync ended
        twin.step(passes, throttle, where="pre", color="black", label="CPU throttle (%)")
        twin.set_ylabel("CPU throttle (%)")
        twin.set_ylim(0, 100)
        twin.legend(loc="upper right", fontsize=8)
    _style(ax)


def _style(ax: Axes, legend: Literal["upper left", "lower left"] = "upper left") -> None:
    ax.grid(visible=True, alpha=0.3)
    ax.legend(loc=legend, fontsize=8)


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")
