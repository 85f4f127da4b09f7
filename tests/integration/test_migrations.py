"""Migrations that end without a fault: completed, through pre-switchover, to and from a file.

Each checks the path both machines took through their tables, where the VM runs afterwards,
and that its state equals a replay that never moved.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.inproc import FINAL, make_pair, small_vm, start_daemon
from tests.integration import paths
from vmm.fill_content import resolve_fill


def test_a_migration_completes_and_the_vm_runs_only_at_the_destination(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await pair.migrate()
            assert "completed" == await pair.source.wait(FINAL)
            assert "completed" == await pair.dest.wait({"completed"})

            assert paths.SRC_COMPLETED == pair.source.source_path()
            assert paths.DST_COMMITTED == pair.dest.dest_path()
            assert await pair.dest.runs()
            assert not await pair.source.runs()
            status = await pair.source.execute("query-status")
            assert {"status": "postmigrate", "running": False} == status
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_query_migrate_reports_what_the_metrics_counted(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await pair.migrate()
            await pair.source.wait(FINAL)
            info = await pair.source.execute("query-migrate")
            assert isinstance(info, dict)
            metrics = pair.source.source.metrics
            ram = info["ram"]

            assert metrics.transferred_bytes == ram["transferred"] > 8 << 20
            assert pair.source.source.sender.conn.sent_bytes == metrics.transferred_bytes
            assert metrics.normal_pages + metrics.zero_pages >= 2048  # all 8 MiB at least once
            assert metrics.downtime_ms() == info["downtime"]
            received = pair.dest.record.metrics
            assert received.normal_pages == metrics.normal_pages
            assert received.zero_pages == metrics.zero_pages
            assert received.received_bytes == metrics.transferred_bytes
        finally:
            await pair.close()

    run(main)


def test_pause_before_switchover_waits_for_migrate_continue(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await pair.migrate(pause_before_switchover=True)
            assert "pre-switchover" == await pair.source.wait({"pre-switchover"})
            assert not await pair.source.runs()  # stopped, waiting

            await pair.source.execute("migrate-continue", {"state": "pre-switchover"})
            assert "completed" == await pair.source.wait(FINAL)
            assert paths.SRC_COMPLETED_AFTER_CONTINUE == pair.source.source_path()
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_a_file_migration_completes_and_loads_elsewhere(run, tmp):
    async def main() -> None:
        source = await start_daemon(tmp, vm=small_vm(), incoming=None)
        dest = await start_daemon(tmp, incoming=None)
        try:
            await source.execute("migrate", {"uri": f"file:{tmp / 'vm.stream'}"})
            assert "completed" == await source.wait(FINAL)
            assert paths.SRC_FILE_COMPLETED == source.source_path()

            await dest.execute("migrate-incoming", {"uri": f"file:{tmp / 'vm.stream'}"})
            assert "completed" == await dest.wait({"completed", "failed"})
            assert paths.DST_FILE_COMMITTED == dest.dest_path()
            await dest.assert_matches_replay()
        finally:
            await source.close()
            await dest.close()

    run(main)


def test_the_vm_comes_back_a_to_b_to_a(run, tmp):
    async def main() -> None:
        a = await start_daemon(tmp, vm=small_vm())  # listens too: it takes the VM back
        b = await start_daemon(tmp)
        try:
            await a.execute("migrate-set-capabilities", EVENTS_AND_DIGEST)
            await a.execute("migrate", {"uri": b.incoming_uri})
            assert "completed" == await a.wait(FINAL)
            await b.execute("migrate-set-capabilities", EVENTS_AND_DIGEST)
            await b.execute("migrate", {"uri": a.incoming_uri})
            assert "completed" == await b.wait(FINAL)

            assert paths.SRC_COMPLETED == b.source_path()
            assert paths.DST_COMMITTED == a.dest_path()
            assert await a.runs()
            assert not await b.runs()
            await a.assert_matches_replay()
        finally:
            await a.close()
            await b.close()

    run(main)


EVENTS_AND_DIGEST = {
    "capabilities": [
        {"capability": "events", "state": True},
        {"capability": "x-digest-check", "state": True},
    ]
}


@pytest.mark.parametrize("fill", ["mixed", "image"])
def test_real_memory_contents_migrate_and_match_the_replay(run, tmp, fill):
    """A guest whose RAM holds real bytes (files, zero pages) moves intact: digest = replay."""
    if fill == "image":
        image = tmp / "dump.bin"
        image.write_bytes(Path("/usr/bin/python3").resolve().read_bytes()[: 3 << 20])
        fill = f"image:{image}"
    config, _ = resolve_fill({"ram_mib": 8, "fill": fill, "dirty_rate": 5000, "seed": 7})

    async def main() -> None:
        pair = await make_pair(tmp, vm=config)
        try:
            await pair.migrate()
            assert "completed" == await pair.source.wait(FINAL)
            info = await pair.source.execute("query-migrate")
            assert info["ram"]["duplicate"] > 0  # the zero pages went as zero pages
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


@pytest.mark.parametrize(("detection", "zero_pages_sent"), [("none", False), ("legacy", True)])
def test_zero_page_detection_none_sends_zero_pages_as_data(run, tmp, detection, zero_pages_sent):
    """QEMU's zero-page-detection: none sends every page whole, and the result is the same."""
    config, _ = resolve_fill({"ram_mib": 8, "fill": "mixed", "workload": "idle", "seed": 3})

    async def main() -> None:
        pair = await make_pair(tmp, vm=config)
        try:
            await pair.source.execute("migrate-set-parameters", {"zero-page-detection": detection})
            await pair.migrate()
            assert "completed" == await pair.source.wait(FINAL)
            ram = (await pair.source.execute("query-migrate"))["ram"]
            assert zero_pages_sent == (ram["duplicate"] > 0)
            assert ram["normal"] + ram["duplicate"] >= 2048  # every page, one way or the other
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)
