"""Migration records: both daemons keep one per migration, in memory (QMP) and under --record-dir.

A completed migration, one whose destination cannot be reached, and one whose connection is cut
during precopy each leave a record whose figures agree with `query-migrate`, and `livemig
report` prints it and draws its chart (checked as an image).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import TYPE_CHECKING

import pytest

from livemig.report import load_record_file, report_lines
from livemig.report_chart import draw_report_chart
from migration.record import RECORD_SCHEMA
from tests.helpers.inproc import FINAL, Daemon, make_pair, small_vm, start_daemon
from tests.integration.paths import SRC_FAILED_ACTIVE
from vmm.records import record_file_name

if TYPE_CHECKING:
    from pathlib import Path

mpimg = pytest.importorskip("matplotlib.image")


async def records_of(daemon: Daemon, **arguments: object) -> list[dict[str, object]]:
    records = await daemon.execute("x-query-migration-records", arguments or None)
    assert isinstance(records, list)
    return records


def assert_chart(record: dict[str, object], out: Path) -> None:
    """`livemig report --png` draws a real, non-blank image."""
    draw_report_chart(record, out)
    image = mpimg.imread(out)
    height, width = image.shape[:2]
    assert width >= 600
    assert height >= 200
    assert image.std() > 0.01, "the chart is blank"


def test_a_completed_migration_leaves_a_record_on_both_sides(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, records=True)
        try:
            await pair.migrate()
            assert "completed" == await pair.source.wait(FINAL)
            await pair.dest.wait({"completed"})
            info = await pair.source.execute("query-migrate")
            assert isinstance(info, dict)
            [source] = await records_of(pair.source)
            [dest] = await records_of(pair.dest)
            return info, source, dest
        finally:
            await pair.close()

    info, source, dest = run(main)
    assert RECORD_SCHEMA == source["schema"] == dest["schema"]
    assert source["id"] == dest["id"] == info["x-migration-id"]
    assert ("source", "completed") == (source["role"], source["status"])
    assert source["failure-cause"] is None
    assert ("destination", "completed") == (dest["role"], dest["status"])
    assert source["vm-uuid"] == dest["vm-uuid"] is not None
    assert "match" == source["digest-check"]
    assert source["query-migrate"]["ram"] == info["ram"]
    summary = source["summary"]
    assert info["ram"]["transferred"] == summary["transferred_bytes"]
    assert info["downtime"] == summary["downtime_ms"]
    assert ["setup", "active", "device", "completed"] == source["statuses"][:2] + source[
        "statuses"
    ][-2:]
    passes = source["passes"]
    assert [row["pass"] for row in passes] == list(range(1, info["ram"]["dirty-sync-count"] + 1))
    assert passes[0]["remaining"] > 0
    assert all(a["at-ms"] <= b["at-ms"] for a, b in itertools.pairwise(passes))
    assert dest["summary"]["received_bytes"] > 0
    assert dest["summary"]["devices"] > 0
    assert source["parameters"]["downtime-limit"] == 300
    assert source["capabilities"]["x-digest-check"] is True


def test_records_are_files_and_the_report_draws_them(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, records=True)
        try:
            await pair.migrate()
            await pair.source.wait(FINAL)
            await pair.dest.wait({"completed"})
            return await records_of(pair.source), await records_of(pair.dest)
        finally:
            await pair.close()

    [source], [dest] = run(main)
    for record, directory in ((source, "records-source"), (dest, "records-dest")):
        path = tmp / directory / record_file_name(str(record["id"]), str(record["role"]))
        assert json.loads(path.read_text()) == json.loads(json.dumps(record))
        assert load_record_file(path)["id"] == record["id"]
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
        assert_chart(record, tmp / f"{record['role']}.png")
    text = "\n".join(report_lines(source))
    assert f"migration {source['id']} (source)" in text
    assert "outcome:      completed" in text
    assert "digest check: match" in text


def test_an_unreachable_destination_leaves_a_failed_record(run, tmp):
    async def main() -> None:
        source = await start_daemon(tmp, vm=small_vm(), incoming=None, record_dir=tmp)
        try:
            await source.execute("migrate", {"uri": "tcp:127.0.0.1:1"})
            assert "failed" == await source.wait(FINAL)
            return await records_of(source, role="source")
        finally:
            await source.close()

    [record] = run(main)
    assert "failed" == record["status"]
    assert "cannot connect" in str(record["error-desc"])
    assert "cannot-connect" == record["failure-cause"]
    assert [] == record["passes"]
    assert (tmp / record_file_name(str(record["id"]), "source")).is_file()
    assert_chart(record, tmp / "failed.png")
    assert "outcome:      failed: cannot connect" in "\n".join(report_lines(record))


def test_a_cut_connection_leaves_failed_records_on_both_sides(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, records=True)
        try:
            no_resume = {"max-bandwidth": 4 << 20, "x-precopy-resume-ms": 0}
            await pair.source.execute("migrate-set-parameters", no_resume)
            pair.fault(type="cut", direction="main", after_bytes=1 << 20)
            await pair.migrate()
            assert "failed" == await pair.source.wait(FINAL)
            await pair.dest.wait({"failed"})
            while pair.source.source_path() != SRC_FAILED_ACTIVE:
                await asyncio.sleep(0.01)
            return await records_of(pair.source), await records_of(pair.dest)
        finally:
            await pair.close()

    [source], [dest] = run(main)
    assert source["id"] == dest["id"]
    assert "failed" == source["status"] == dest["status"]
    assert source["error-desc"]
    assert dest["error-desc"]
    assert "protocol-error" == source["failure-cause"]  # the connection closed
    # cut at a byte offset: inside a frame (truncated) or, rarely, between two
    assert dest["failure-cause"] in ("truncated", "connection-lost")
    assert len(source["passes"]) >= 1
    assert source["summary"]["downtime_ms"] is None
    assert_chart(source, tmp / "cut.png")


def test_the_newest_records_are_kept_and_found_by_prefix(run, tmp):
    async def main() -> None:
        a = await start_daemon(tmp, vm=small_vm())  # listens too: it takes the VM back
        b = await start_daemon(tmp)
        try:
            a.vmm.records.capacity = 2
            ids = []
            for sender, receiver in ((a, b), (b, a), (a, b)):
                await sender.execute("migrate", {"uri": receiver.incoming_uri})
                assert "completed" == await sender.wait(FINAL)
                await receiver.wait({"completed"})
                info = await sender.execute("query-migrate")
                ids.append(info["x-migration-id"])
            return ids, a.vmm.records
        finally:
            await a.close()
            await b.close()

    ids, book = run(main)
    kept = book.find()  # a sent migrations 1 and 3 and received 2: the newest two are kept
    assert [(r["id"], r["role"]) for r in kept] == [(ids[1], "destination"), (ids[2], "source")]
    assert [r["id"] for r in book.find(migration_id=ids[2][:6])] == [ids[2]]
    assert [] == book.find(migration_id=ids[0])
    assert [ids[1]] == [r["id"] for r in book.find(role="destination")]
