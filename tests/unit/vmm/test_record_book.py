"""The record book: the newest records by (id, role), written whole or not at all."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from vmm.records import RecordBook, record_file_name, wall_clock_iso

if TYPE_CHECKING:
    from pathlib import Path


def record(migration_id: str, role: str = "source", **extra: object) -> dict[str, object]:
    return {"schema": "livemig-migration-record/1", "id": migration_id, "role": role, **extra}


def test_a_newer_record_of_the_same_migration_replaces_it_and_moves_to_the_end():
    book = RecordBook(capacity=3)
    book.keep(record("a", status="in-doubt"))
    book.keep(record("b"))
    book.keep(record("a", status="completed"))
    assert [("b", None), ("a", "completed")] == [(r["id"], r.get("status")) for r in book.find()]


def test_only_the_newest_records_are_kept_and_found_by_prefix_and_role():
    book = RecordBook(capacity=2)
    for migration_id in ("aa1", "ab2", "ab3"):
        book.keep(record(migration_id))
    book.keep(record("ab3", role="destination"))
    assert [("ab3", "source"), ("ab3", "destination")] == [
        (r["id"], r["role"]) for r in book.find()
    ]
    assert [] == book.find(migration_id="aa")
    assert ["destination"] == [r["role"] for r in book.find(migration_id="ab", role="destination")]


def test_records_are_written_as_json_files(tmp_path: Path):
    book = RecordBook(directory=tmp_path)
    path = book.keep(record("m1", passes=[{"pass": 1}]))
    assert tmp_path / record_file_name("m1", "source") == path
    assert record("m1", passes=[{"pass": 1}]) == json.loads(path.read_text())
    assert [path] == list(tmp_path.iterdir())


def test_a_record_that_cannot_be_written_is_kept_in_memory_and_leaves_no_file(tmp_path: Path):
    book = RecordBook(directory=tmp_path / "gone")
    assert book.keep(record("m1")) is None
    assert ["m1"] == [r["id"] for r in book.find()]
    assert [] == list(tmp_path.iterdir())


def test_a_record_that_fails_while_written_leaves_no_temporary(tmp_path: Path):
    book = RecordBook(directory=tmp_path)
    assert book.keep(record("m1", bad=float("nan"))) is not None  # NaN is written, as JSON allows
    book = RecordBook(directory=tmp_path / "m1-source.json")  # a file, not a directory
    assert book.keep(record("m2")) is None
    assert ["m1-source.json"] == [p.name for p in tmp_path.iterdir()]


def test_wall_clock_times_are_iso_8601_utc():
    assert "1970-01-01T00:00:01.500+00:00" == wall_clock_iso(1.5)
