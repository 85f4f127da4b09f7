"""The integration tests together take every row of both status tables (reserved rows aside).

The paths the tests assert are in `paths.py`; this checks that their union is every row of
`migration.table` not reserved for later work, and that every path is asserted by some test.
"""

from __future__ import annotations

from pathlib import Path

from migration.table import DEST_ROWS, SOURCE_ROWS
from tests.integration import paths

HERE = Path(__file__).resolve().parent


def _taken(prefix: str) -> set[tuple[object, object, object]]:
    rows = set()
    for name, path in paths.all_paths().items():
        if name.startswith(prefix):
            rows |= {(row.status, row.trigger, row.after) for row in path}
    return rows


def _rows(table) -> set[tuple[object, object, object]]:
    return {(row.status, row.trigger, row.after) for row in table if not row.reserved}


def test_every_source_row_is_taken_by_some_path():
    assert set() == _rows(SOURCE_ROWS) - _taken("SRC_")


def test_every_destination_row_is_taken_by_some_path():
    assert set() == _rows(DEST_ROWS) - _taken("DST_")


def test_paths_only_take_rows_of_the_tables():
    assert set() == _taken("SRC_") - _rows(SOURCE_ROWS)
    assert set() == _taken("DST_") - _rows(DEST_ROWS)


def test_every_path_is_asserted_by_a_test():
    sources = "".join(
        p.read_text() for p in HERE.glob("test_*.py") if p.name != Path(__file__).name
    )
    unused = sorted(name for name in paths.all_paths() if f"paths.{name}" not in sources)
    assert [] == unused
