"""`livemig report`: reading a record file, refusing what is not one, the printed report."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from livemig.report import (
    PASS_ROWS_SHOWN,
    ReportError,
    load_record_file,
    record_target,
    report_lines,
    status_path,
)
from migration.record import RECORD_SCHEMA

if TYPE_CHECKING:
    from pathlib import Path


def source_record(passes: int) -> dict[str, object]:
    return {
        "schema": RECORD_SCHEMA,
        "id": "abc",
        "role": "source",
        "status": "completed",
        "statuses": ["setup", "active", "active", "device", "completed"],
        "summary": {
            "total_ms": 1234,
            "downtime_ms": 20,
            "downtime_breakdown_ms": {"final-ram": 5, "device-state": 15},
            "transferred_bytes": 3 << 20,
            "dirty_syncs": passes,
            "throttle_started_at_pass": 4,
        },
        "parameters": {"downtime-limit": 300},
        "capabilities": {"events": True, "auto-converge": True, "dirty-limit": False},
        "digest-check": "match",
        "passes": [{"pass": n, "remaining": 1 << 20} for n in range(1, passes + 1)],
    }


def test_the_report_names_the_outcome_figures_and_passes():
    text = "\n".join(report_lines(source_record(5)))
    assert "migration abc (source)" in text
    assert "statuses:     setup -> active (x2) -> device -> completed" in text
    assert "downtime:     20 ms (final-ram 5 ms, device-state 15 ms), limit 300 ms" in text
    assert "transferred:  3.0 MiB" in text
    assert "passes:       5, throttled from pass 4, digest check: match" in text
    assert "capabilities: events, auto-converge" in text
    assert 5 == sum("1.0 MiB" in line for line in text.splitlines())


def test_a_long_migration_shows_its_first_and_last_passes():
    lines = report_lines(source_record(100))
    rows = [line for line in lines if "1.0 MiB" in line]
    assert PASS_ROWS_SHOWN == len(rows)
    assert "   ..." in lines
    assert rows[-1].split()[0] == "100"


def test_a_failed_destination_record_reads_well():
    record = {
        "schema": RECORD_SCHEMA,
        "id": "x",
        "role": "destination",
        "status": "failed",
        "error-desc": "source aborted: cancelled",
        "summary": {"received_bytes": 0, "ram_ready_ms": None},
    }
    text = "\n".join(report_lines(record))
    assert "outcome:      failed: source aborted: cancelled" in text
    assert "received:     0.0 MiB" in text


def test_status_paths_count_repeats():
    assert "none" == status_path(["none"])
    assert "a -> b (x3) -> a" == status_path(["a", "b", "b", "b", "a"])


def test_record_files_are_checked(tmp_path: Path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(source_record(1)))
    assert "abc" == load_record_file(good)["id"]
    assert good == record_target(str(good))
    assert record_target("abc123") is None

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something/2"}))
    with pytest.raises(ReportError, match=r"not a migration record of schema .* 'something/2'"):
        load_record_file(other)
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\x00{")
    with pytest.raises(ReportError, match="is not a migration record"):
        load_record_file(garbage)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(ReportError, match="found 'list'"):
        load_record_file(listing)
