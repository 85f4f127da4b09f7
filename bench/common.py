"""Shared helpers: statistics, process usage, memory warm-up, result files, printing."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Sequence

MIB: Final = 1 << 20
GIB: Final = 1 << 30
PAGE: Final = 4096
DEFAULT_OUT: Final = Path(__file__).resolve().parent / "results"
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What every figure needs to know about this run."""

    out: Path = DEFAULT_OUT
    quick: bool = False
    baseline_tree: Path | None = None  # another checkout to compare with (`engine` figure)

    def json_path(self, name: str) -> Path:
        return self.out / f"{name}.json"

    def png_path(self, name: str) -> Path:
        return self.out / f"{name}.png"


@dataclass(kw_only=True)
class Run:
    """One benchmark run: its settings and the results of the figures done so far."""

    settings: Settings
    results: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        return self.settings.quick

    def pick(self, full: _T, quick: _T) -> _T:
        return quick if self.settings.quick else full


@dataclass(frozen=True, kw_only=True)
class Spread:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float
    n: int
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        clean = [v for v in values if not math.isnan(v)]
        if not clean:
            return cls(median=math.nan, low=math.nan, high=math.nan, n=0)
        return cls(
            median=statistics.median(clean),
            low=min(clean),
            high=max(clean),
            n=len(clean),
            values=[round(v, 4) for v in clean],
        )

    def text(self, fmt: str = ".0f") -> str:
        if not self.n:
            return "n/a"
        return f"{self.median:{fmt}} ({self.low:{fmt}}-{self.high:{fmt}})"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline and not math.isnan(baseline) else math.nan


@dataclass(frozen=True, kw_only=True)
class ProcessUsage:
    """A process's memory and CPU from /proc (Linux)."""

    rss_bytes: int
    peak_rss_bytes: int
    cpu_s: float

    @classmethod
    def of(cls, pid: int) -> ProcessUsage:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # Fields 14 and 15 (utime, stime) are at 11 and 12 after the ") " split.
        cpu_ticks = int(stat[11]) + int(stat[12])
        return cls(
            rss_bytes=_kib(fields.get("VmRSS")),
            peak_rss_bytes=_kib(fields.get("VmHWM")),
            cpu_s=cpu_ticks / _CLOCK_TICKS,
        )


def _kib(text: str | None) -> int:
    """A /proc size field in bytes; 0 once the process exited (a zombie has no memory)."""
    return int(text.strip().split()[0]) * 1024 if text else 0


def warm_memory(n_bytes: int) -> float:
    """Allocate, touch and free n_bytes in a throwaway process; return the seconds it took.

    This host backs memory lazily: the first touch of memory nobody touched recently costs
    ~2.4 s/GiB, later touches ~0.1 s/GiB. Warming before timing keeps that out of the figures.
    """
    started = time.perf_counter()
    code = f"import numpy as n; a = n.ones({n_bytes}, dtype=n.uint8); a[::4096] = 2"
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def write_json(settings: Settings, name: str, data: dict[str, object]) -> Path:
    """Write one figure's results as JSON (NaN becomes null)."""
    settings.out.mkdir(parents=True, exist_ok=True)
    path = settings.json_path(name)
    path.write_text(json.dumps(to_json(data), indent=2) + "\n")
    return path


def to_json(value: object) -> object:
    """Plain JSON values: dataclasses as dicts, NaN and infinities as None, floats rounded."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return to_json(asdict(value))  # type: ignore[call-overload]
    return value


def header(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def gbps(n_bytes: float, seconds: float) -> float:
    """GB/s (10^9 bytes per second); NaN when the time is not positive."""
    return n_bytes / seconds / 1e9 if seconds > 0 else math.nan


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows under headers, columns padded to their widest cell."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        say("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def verdict(met: bool | None) -> str:  # noqa: FBT001 - a yes/no/unknown value
    return {True: "met", False: "NOT met", None: "n/a"}[met]
