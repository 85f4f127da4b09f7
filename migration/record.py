"""The record of one migration, as each side keeps it once it ends (or goes in doubt).

A record answers "what happened, pass by pass?" after the fact, as libvirt's
`domjobinfo --completed` does: the parameters and capabilities it ran with, the statuses it went
through, its per-pass samples (`migration.passes`), the downtime breakdown, the outcome and its
reason, the digest check, and the final `query-migrate` reply. It is plain JSON (dashed names, as
QMP), built here from the machines' metrics without I/O or a clock; the daemon adds the wall-clock
start and the VM's UUID, keeps the newest records and writes them under `--record-dir`
(`vmm.records`), and `livemig report` prints and draws them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from migration.metrics import elapsed_ms, error_cause
from migration.status import MigrationStatus
from migration.table import SourceTrigger
from protocol import ErrorCode

if TYPE_CHECKING:
    from collections.abc import Mapping

    from migration.ledger import IncomingRecord
    from migration.params import MigrationCapabilities, MigrationParameters
    from migration.source import SourceMigration

RECORD_SCHEMA: Final = "livemig-migration-record/1"
Record = dict[str, object]


def source_record(source: SourceMigration, *, info: Mapping[str, object], now: float) -> Record:
    """The record of an outgoing migration, from its machine and its final `query-migrate`."""
    metrics = source.metrics
    return {
        "schema": RECORD_SCHEMA,
        "id": source.migration_id,
        "role": "source",
        "status": str(source.status.status),
        "error-desc": metrics.error_desc,
        "failure-cause": source_failure_cause(source),
        "ended-by": metrics.ended_by,
        "statuses": [str(row.after) for row in source.status.history],
        "capabilities": _capabilities(source.caps),
        "parameters": source.params.to_qmp(),
        "summary": metrics.summary(now),
        "digest-check": metrics.digest_check,
        "passes": metrics.passes.to_json(),
        "pass-stride": metrics.passes.stride,
        "query-migrate": dict(info),
    }


def dest_record(
    record: IncomingRecord,
    *,
    params: MigrationParameters,
    caps: MigrationCapabilities,
    now: float,
) -> Record:
    """The record of an incoming migration, from its ledger record."""
    metrics = record.metrics
    end = metrics.ended_at if metrics.ended_at is not None else now
    summary: dict[str, object] = {
        "total_ms": elapsed_ms(end - metrics.started_at),
        "ram_ready_ms": _since(metrics.started_at, metrics.ram_ready_at),
        "loaded_ms": _since(metrics.started_at, metrics.loaded_at),
        **metrics.summary(),
    }
    return {
        "schema": RECORD_SCHEMA,
        "id": record.migration_id,
        "role": "destination",
        "status": str(record.status),
        "error-desc": record.reason,
        "failure-cause": record.failure_cause,
        "statuses": [str(row.after) for row in record.history],
        "capabilities": _capabilities(caps),
        "parameters": params.to_qmp(),
        "summary": summary,
        "from-file": record.from_file,
        "passes": [],
    }


def source_failure_cause(source: SourceMigration) -> str | None:
    """Why an outgoing migration failed, as a short bounded label (None unless it failed).

    The timeout policy that ended it, `shutdown` (the daemon stopped), `in-doubt-resumed` (the
    handover was in doubt and the VM resumed here), `cannot-connect` (an internal error before
    a byte was sent: the main channel never opened), else the error code it failed with.
    """
    if source.status.status is not MigrationStatus.FAILED:
        return None
    metrics, last = source.metrics, source.status.history[-1]
    code = metrics.error_code
    rules = (
        (last.trigger is SourceTrigger.SHUTDOWN, "shutdown"),
        (last.status is MigrationStatus.IN_DOUBT, "in-doubt-resumed"),
        (metrics.ended_by is not None, str(metrics.ended_by)),
        (code is ErrorCode.INTERNAL and metrics.transferred_bytes == 0, "cannot-connect"),
    )
    cause = next((cause for applies, cause in rules if applies), None)
    if cause is None:
        cause = error_cause(code) if code is not None else "unknown"
    return cause


def summary_fields(record: Mapping[str, object]) -> dict[str, object]:
    """The canonical summary log line of a record: one flat line of its outcome and figures."""
    summary = record.get("summary")
    fields: dict[str, object] = {
        "migration_id": record.get("id"),
        "role": record.get("role"),
        "status": record.get("status"),
        "error": record.get("error-desc"),
    }
    if record.get("failure-cause") is not None:
        fields["cause"] = record["failure-cause"]
    if isinstance(summary, dict):
        fields.update(summary)
    if record.get("digest-check") is not None:
        fields["digest_check"] = record["digest-check"]
    return fields


def _capabilities(caps: MigrationCapabilities) -> dict[str, object]:
    return {str(item["capability"]): item["state"] for item in caps.to_qmp()}


def _since(start: float, at: float | None) -> int | None:
    return None if at is None else elapsed_ms(at - start)
