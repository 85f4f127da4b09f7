"""The benchmarks must not rot: ``python -m bench all --quick`` runs and writes every result.

This checks that the suite runs end to end and what it writes, never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FIGURES = (
    "micro",
    "wire",
    "throughput",
    "zero_pages",
    "scale",
    "downtime",
    "convergence",
    "busy",
    "qemu",
    "summary",
)
CHARTS = ("throughput", "downtime", "convergence", "iterations", "busy", "scale")


def run_quick(figure: str, out: Path, *, timeout_s: float = 110) -> None:
    """`python -m bench FIGURE --quick --out OUT`, which must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", figure, "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert 0 == done.returncode, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.timeout(280)
def test_quick_run_writes_every_figure_and_chart(tmp_path: Path) -> None:
    run_quick("all", tmp_path, timeout_s=270)
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in FIGURES}
    for name in CHARTS:
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert all(r["status"] == "completed" for r in results["throughput"]["runs"])
    assert all(r["status"] == "completed" for r in results["zero_pages"]["runs"])
    assert {"ab", "random", "hotset"} == {g["workload"] for g in results["downtime"]["groups"]}
    assert set(FIGURES) - {"summary"} == set(results["summary"]["seconds"]) - {"total"}


@pytest.mark.timeout(120)
def test_the_metrics_figure_runs_on_demand(tmp_path: Path) -> None:
    """`python -m bench metrics` (not in `all`): both daemons scraped and not, in turns."""
    run_quick("metrics", tmp_path)
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert {(False, "completed"), (True, "completed")} == {
        (r["scraped"], r["status"]) for r in result["runs"]
    }
    assert all(r["scrapes"] > 0 for r in result["runs"] if r["scraped"])


@pytest.mark.parametrize("figure", ["tls", "fills"])
def test_the_tls_and_fills_figures_run_on_demand(tmp_path: Path, figure: str) -> None:
    """`python -m bench tls` migrates over TLS and not; `fills` measures each fill's RAM."""
    run_quick(figure, tmp_path)
    result = json.loads((tmp_path / f"{figure}.json").read_text())
    if figure == "tls":  # plaintext, TLS without the xxh3 footers (the default), and with them
        assert {(v, "completed") for v in ("plaintext", "tls", "tls+xxh3")} == {
            (r["variant"], r["status"]) for r in result["runs"]
        }
        assert result["ceiling_ratio"] > 0  # the bare TLS pair (bench.wire_tls) moved bytes
    else:
        fills = result["fills"]
        assert fills["random"]["zlib_ratio"] < 1.05 < fills["mixed"]["zlib_ratio"]
        assert fills["random"]["zero_share"] == 0.0
        assert fills["mixed"]["zero_share"] >= 0.24


@pytest.mark.parametrize("figure", ["multifd", "links"])
def test_the_multifd_and_links_figures_run_on_demand(tmp_path: Path, figure: str) -> None:
    """`python -m bench multifd` and `links` (network namespaces, root): every run completes."""
    run_quick(figure, tmp_path)
    result = json.loads((tmp_path / f"{figure}.json").read_text())
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert result["runs"]
    assert all(r["status"] == "completed" for r in result["runs"])
    if figure == "links":
        mixed_zstd = next(r for r in result["runs"] if (r["fill"], r["mode"]) == ("mixed", "zstd"))
        assert mixed_zstd["compression_ratio"] > 2
