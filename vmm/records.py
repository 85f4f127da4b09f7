"""The records of the migrations this daemon took part in: the newest in memory, all on disk.

A record (`migration.record`) is kept once a migration ends or goes in doubt, and replaced when a
migration in doubt is settled. The daemon keeps the newest `capacity` records for QMP's
`x-query-migration-records`; with `--record-dir DIR` it also writes each one to
``DIR/<id>-<role>.json`` (written to a temporary file and renamed, so a reader never sees half a
record). A record that cannot be written is logged and the migration is not touched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

if TYPE_CHECKING:
    from collections.abc import Mapping

    from migration.record import Record

log = structlog.get_logger("vmm.records")
RECORDS_KEPT: Final = 32


def wall_clock_iso(at: float) -> str:
    """A POSIX time as ISO 8601 in UTC (millisecond precision)."""
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")


def record_file_name(migration_id: str, role: str) -> str:
    """The file a record is written to under `--record-dir`."""
    return f"{migration_id}-{role}.json"


class RecordBook:
    """The newest records by (id, role), and the directory they are written to (if any)."""

    def __init__(self, *, directory: Path | None = None, capacity: int = RECORDS_KEPT) -> None:
        self.directory = directory
        self.capacity = capacity
        self._records: OrderedDict[tuple[str, str], Record] = OrderedDict()

    def keep(self, record: Record) -> Path | None:
        """Keep `record` (replacing an earlier one of the same migration and role); write it.

        Returns:
            The file written, if there is a record directory and writing worked.
        """
        key = (str(record["id"]), str(record["role"]))
        self._records.pop(key, None)
        self._records[key] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)
        if self.directory is None:
            return None
        return self._write(record, self.directory / record_file_name(*key))

    def find(self, *, migration_id: str | None = None, role: str | None = None) -> list[Record]:
        """The kept records, oldest first; only those whose id starts with `migration_id`."""
        return [
            record
            for (rid, rrole), record in self._records.items()
            if (migration_id is None or rid.startswith(migration_id))
            and (role is None or rrole == role)
        ]

    @staticmethod
    def _write(record: Mapping[str, object], path: Path) -> Path | None:
        temporary: Path | None = None
        try:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=".record-", suffix=".json")
            temporary = Path(name)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(record, out, indent=1, default=str)
                out.write("\n")
            temporary.replace(path)
        except OSError as exc:
            log.warning("migration_record_not_written", path=str(path), error=str(exc))
            if temporary is not None:
                temporary.unlink(missing_ok=True)
            return None
        return path
