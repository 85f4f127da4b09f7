"""Migration records and logs of real daemons: `--record-dir`, `livemig report`, summary lines.

Every log line of a migration names it (`migration_id`) and each side ends it with one
`migration_summary` line; a completed and a failed migration each leave a record file that
`livemig report` prints, from the file or from the daemon over QMP, and draws as a PNG.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.e2e.conftest import dest_args, livemig, migrate, qmp, source_args

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
_SETUP_EVENTS = ("migration_setup", "incoming_setup")


def migration_lines(lines: list[dict[str, object]]) -> list[dict[str, object]]:
    """The log lines from a migration's setup to its summary, QMP client lines left out."""
    events = [str(line.get("event")) for line in lines]
    first = min(events.index(event) for event in _SETUP_EVENTS if event in events)
    last = events.index("migration_summary")
    return [
        line
        for line, event in zip(lines[first : last + 1], events[first : last + 1], strict=True)
        if not event.startswith("qmp_client")
    ]


def assert_png(path: Path) -> None:
    """A real PNG of a sensible size (the pixels are checked by tests/integration)."""
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 600
    assert height >= 200
    assert len(data) > 10_000


async def test_a_migration_is_logged_recorded_and_reported(daemons, tmp_path) -> None:
    records = tmp_path / "records"
    source = daemons(
        "source_daemon", *source_args("uvloop"), "--record-dir", str(records / "source")
    )
    dest = daemons("dest_daemon", *dest_args("uvloop", "--record-dir", str(records / "dest")))
    info = await migrate(source, dest)
    assert "completed" == info["status"]
    migration_id = str(info["x-migration-id"])
    summaries = [source.wait_for_log("migration_summary"), dest.wait_for_log("migration_summary")]

    for daemon, summary in zip((source, dest), summaries, strict=True):
        assert migration_id == summary["migration_id"]
        assert "completed" == summary["status"]
        lines = migration_lines(daemon.lines)
        assert len(lines) >= 3  # setup, loaded or events, the summary
        assert all(line.get("migration_id") == migration_id for line in lines), lines
        assert 1 == sum(line.get("event") == "migration_summary" for line in daemon.lines)
    assert info["ram"]["transferred"] == summaries[0]["transferred_bytes"]
    assert info["downtime"] == summaries[0]["downtime_ms"]

    source_file = records / "source" / f"{migration_id}-source.json"
    dest_file = records / "dest" / f"{migration_id}-destination.json"
    code, out, err = await livemig("report", str(source_file), "--png", str(tmp_path / "s.png"))
    assert 0 == code, err
    assert f"migration {migration_id} (source)" in out
    assert "outcome:      completed" in out
    assert "digest check: match" in out
    assert_png(tmp_path / "s.png")

    code, out, err = await livemig("report", migration_id[:8], "--qmp", dest.qmp_address)
    assert 0 == code, err
    assert f"migration {migration_id} (destination)" in out
    code, out, _ = await livemig("report", migration_id, "--qmp", dest.qmp_address, "--json")
    assert json.loads(out) == json.loads(dest_file.read_text())


async def test_a_failed_migration_leaves_a_record_and_a_report(daemons, tmp_path) -> None:
    source = daemons("source_daemon", *source_args("uvloop"), "--record-dir", str(tmp_path))
    async with qmp(source) as client:
        await client.execute("migrate", {"uri": "tcp:127.0.0.1:1"})
    summary = source.wait_for_log("migration_summary")
    assert "failed" == summary["status"]
    assert "cannot connect" in str(summary["error"])

    [record] = tmp_path.glob("*-source.json")
    code, out, err = await livemig("report", str(record), "--png", str(tmp_path / "f.png"))
    assert 0 == code, err
    assert "outcome:      failed: cannot connect" in out
    assert_png(tmp_path / "f.png")

    code, _, err = await livemig("report", "0123abcd", "--qmp", source.qmp_address)
    assert 1 == code
    assert "has no record of a migration 0123abcd" in err


async def test_a_bad_record_dir_is_a_clear_start_up_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dest_daemon",
        *dest_args("uvloop", "--record-dir", str(blocker / "records")),
        stderr=subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(done.communicate(), 30)
    assert 2 == done.returncode
    assert b"cannot create the record directory" in stderr
