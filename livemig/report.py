"""`livemig report ID|FILE`: what happened in one migration, pass by pass.

The record comes from a file a daemon wrote under `--record-dir`, or from a running daemon over
QMP (`x-query-migration-records`, matching an id or a unique prefix of one). The report prints
the outcome, the times, the downtime breakdown, the bytes and the passes; `--png` draws the
per-pass chart (`livemig.report_chart`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Final

from migration.record import RECORD_SCHEMA
from netio import QMPClient

if TYPE_CHECKING:
    from collections.abc import Mapping

Record = dict[str, object]
MAX_RECORD_FILE_BYTES: Final = 64 * 1024 * 1024
PASS_ROWS_SHOWN: Final = 12  # the first and last passes; the chart shows them all
MIB: Final = 1024 * 1024


class ReportError(Exception):
    """A record that cannot be found or read."""


def load_record_file(path: Path) -> Record:
    """A record written by a daemon (`--record-dir`).

    Raises:
        ReportError: too big, not JSON, or not a livemig migration record.
    """
    size = path.stat().st_size
    if size > MAX_RECORD_FILE_BYTES:
        msg = f"{path} is {size} bytes, more than any migration record ({MAX_RECORD_FILE_BYTES})"
        raise ReportError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path} is not a migration record: {exc}"
        raise ReportError(msg) from exc
    return checked(data, str(path))


def checked(data: object, where: str) -> Record:
    """`data` if it is a record of the schema this livemig reads.

    Raises:
        ReportError: it is not.
    """
    if not isinstance(data, dict) or data.get("schema") != RECORD_SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else type(data).__name__
        msg = f"{where} is not a migration record of schema {RECORD_SCHEMA} (found {schema!r})"
        raise ReportError(msg)
    return data


async def fetch_record(address: str, migration_id: str) -> Record:
    """The newest record of a migration whose id starts with `migration_id`, from a daemon.

    Raises:
        ReportError: the daemon has no such record, or the prefix names several migrations.
    """
    async with await QMPClient.connect(address) as client:
        records = await client.execute("x-query-migration-records", {"id": migration_id})
    if not isinstance(records, list) or not records:
        msg = f"the daemon at {address} has no record of a migration {migration_id}"
        raise ReportError(msg)
    ids = sorted({str(r.get("id")) for r in records if isinstance(r, dict)})
    if len(ids) > 1:
        msg = f"{migration_id!r} names several migrations: {', '.join(ids)}"
        raise ReportError(msg)
    return checked(records[-1], f"the record of {ids[0]}")


def report_lines(record: Mapping[str, object]) -> list[str]:
    """The report, as lines of text."""
    summary = as_mapping(record.get("summary"))
    lines = [
        f"migration {record.get('id')} ({record.get('role')}), started {record.get('started-at')}",
        f"  VM:           {record.get('vm-uuid')}",
        f"  outcome:      {record.get('status')}"
        + (f": {record['error-desc']}" if record.get("error-desc") else ""),
        f"  statuses:     {status_path(as_list(record.get('statuses')))}",
        f"  total time:   {summary.get('total_ms')} ms",
    ]
    if record.get("role") == "source":
        lines += _source_lines(record, summary)
    else:
        lines += _dest_lines(summary)
    on = [name for name, state in as_mapping(record.get("capabilities")).items() if state is True]
    lines.append(f"  capabilities: {', '.join(on) or 'none'}")
    return lines


def status_path(statuses: list[object]) -> str:
    """`setup -> active (x10) -> device -> completed`: repeats (throttle rows) counted."""
    steps: list[tuple[str, int]] = []
    for status in map(str, statuses):
        if steps and steps[-1][0] == status:
            steps[-1] = (status, steps[-1][1] + 1)
        else:
            steps.append((status, 1))
    return " -> ".join(name if n == 1 else f"{name} (x{n})" for name, n in steps)


def _source_lines(record: Mapping[str, object], summary: Mapping[str, object]) -> list[str]:
    breakdown = as_mapping(summary.get("downtime_breakdown_ms"))
    parts = ", ".join(f"{name} {ms} ms" for name, ms in breakdown.items())
    limit_ms = as_mapping(record.get("parameters")).get("downtime-limit")
    downtime = f"{summary.get('downtime_ms')} ms" + (f" ({parts})" if parts else "")
    passes_line = f"{summary.get('dirty_syncs')}" + _throttle_note(summary)
    if record.get("digest-check"):
        passes_line += f", digest check: {record['digest-check']}"
    lines = [
        f"  downtime:     {downtime}, limit {limit_ms} ms",
        f"  transferred:  {_pages(summary, 'transferred_bytes')}",
        f"  passes:       {passes_line}",
    ]
    passes = [as_mapping(row) for row in as_list(record.get("passes"))]
    if passes:
        lines.append("  pass    at ms   remaining  dirtied pages      Mbit/s  throttle %")
        shown = passes
        if len(passes) > PASS_ROWS_SHOWN:
            half = PASS_ROWS_SHOWN // 2
            shown = [*passes[:half], {}, *passes[-half:]]
        lines += [_pass_line(row) for row in shown]
    return lines


def _pages(summary: Mapping[str, object], bytes_key: str) -> str:
    pages = f"{summary.get('normal_pages')} pages, {summary.get('zero_pages')} zero pages"
    return f"{_bytes(summary.get(bytes_key))} ({pages})"


def _throttle_note(summary: Mapping[str, object]) -> str:
    began = summary.get("throttle_started_at_pass")
    return "" if began is None else f", throttled from pass {began}"


def _pass_line(row: Mapping[str, object]) -> str:
    if not row:
        return "   ..."
    cells = [
        (row.get("pass"), 4),
        (row.get("at-ms"), 8),
        (_bytes(row.get("remaining")), 11),
        (row.get("dirtied-pages"), 14),
        (row.get("mbps"), 11),
        (row.get("cpu-throttle-percentage"), 11),
    ]
    return " " + "".join(
        f"{'-' if value is None else value!s:>{width + 1}}" for value, width in cells
    )


def _dest_lines(summary: Mapping[str, object]) -> list[str]:
    ready_ms, loaded_ms = summary.get("ram_ready_ms"), summary.get("loaded_ms")
    return [
        f"  RAM ready:    {ready_ms} ms, loaded at {loaded_ms} ms",
        f"  received:     {_pages(summary, 'received_bytes')}, {summary.get('devices')} devices",
    ]


def _bytes(value: object) -> str:
    if not isinstance(value, int | float):
        return str(value)
    return f"{value / MIB:.1f} MiB"


def as_mapping(value: object) -> dict[str, object]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[object]:
    """`value` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def record_target(target: str) -> Path | None:
    """The file `target` names, if it is one (else it is a migration id)."""
    path = Path(target)
    return path if path.is_file() else None
