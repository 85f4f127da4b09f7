"""The `query-migrate` reply, built from one side's metrics.

Field names and meanings follow QEMU's `MigrationInfo` and `MigrationStats` (qapi/migration.json)
and its rules for which members appear in which status (`fill_source_migration_info`,
`populate_time_info`, `populate_ram_info`). livemig's own extras start with `x-`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from migration.status import MigrationStatus

if TYPE_CHECKING:
    from migration.ledger import IncomingRecord
    from migration.metrics import SourceMetrics
    from migration.params import MigrationCapabilities

S = MigrationStatus
_RAM_STATUSES: Final = frozenset(
    {
        S.ACTIVE,
        S.PRE_SWITCHOVER,
        S.DEVICE,
        S.CANCELLING,
        S.IN_DOUBT,
        S.COMPLETED,
        S.POSTCOPY_ACTIVE,
        S.POSTCOPY_PAUSED,
        S.POSTCOPY_RECOVER_SETUP,
        S.POSTCOPY_RECOVER,
    }
)
_ERROR_STATUSES: Final = frozenset({S.FAILED, S.IN_DOUBT, S.CANCELLED, S.POSTCOPY_PAUSED})


def source_info(
    status: MigrationStatus,
    metrics: SourceMetrics,
    *,
    now: float,
    caps: MigrationCapabilities | None = None,
) -> dict[str, object]:
    """The `query-migrate` reply of a source, member by member as QEMU decides.

    `cpu-throttle-percentage` appears when auto-converge is on (QEMU `populate_ram_info`), or
    when `x-timeout-action throttle` turned it on; the dirty-limit figures come from the VM, so
    the daemon adds them.
    """
    if status is S.NONE:
        return {}
    info: dict[str, object] = {"status": str(status)}
    if status in _RAM_STATUSES:
        info.update(_time_info(status, metrics, now=now))
        info["ram"] = _ram_info(status, metrics)
        cpu_throttled = metrics.throttle_started_at_pass is not None and not (
            caps is not None and caps.dirty_limit
        )
        if (caps is not None and caps.auto_converge) or cpu_throttled:
            info["cpu-throttle-percentage"] = metrics.cpu_throttle_percent
        if metrics.xbzrle_cache is not None:
            info["xbzrle-cache"] = dict(metrics.xbzrle_cache)
    _add_extras(info, status, metrics)
    return info


def _add_extras(info: dict[str, object], status: MigrationStatus, metrics: SourceMetrics) -> None:
    """The `x-` members livemig adds to a source's reply."""
    if metrics.precopy_breaks:
        info["x-precopy-breaks"] = metrics.precopy_breaks
        info["x-reconnecting"] = metrics.reconnecting and status is S.ACTIVE
    if metrics.throttle_started_at_pass is not None:
        info["x-throttle-started-at-pass"] = metrics.throttle_started_at_pass
    if metrics.timeout_actions:
        info["x-timeout-actions"] = [action.to_qmp() for action in metrics.timeout_actions]
    if status is S.COMPLETED:
        info["x-downtime-breakdown"] = metrics.downtime.breakdown_ms()
        info["x-iterations"] = metrics.dirty_sync_count
    if metrics.error_desc is not None and status in _ERROR_STATUSES:
        info["error-desc"] = metrics.error_desc


def _time_info(status: MigrationStatus, metrics: SourceMetrics, *, now: float) -> dict[str, object]:
    info: dict[str, object] = {"total-time": metrics.total_ms(now)}
    if metrics.setup_done_at is not None:
        info["setup-time"] = round((metrics.setup_done_at - metrics.started_at) * 1000)
    downtime = metrics.downtime_ms()
    if status is S.COMPLETED and downtime is not None:
        info["downtime"] = downtime
    else:
        info["expected-downtime"] = metrics.expected_downtime_ms
    return info


def _ram_info(status: MigrationStatus, metrics: SourceMetrics) -> dict[str, object]:
    ram: dict[str, object] = {
        "transferred": metrics.transferred_bytes,
        "total": metrics.total_bytes,
        "duplicate": metrics.zero_pages,
        "normal": metrics.normal_pages,
        "normal-bytes": metrics.normal_pages * metrics.page_size,
        "dirty-sync-count": metrics.dirty_sync_count,
        "page-size": metrics.page_size,
        "mbps": round(metrics.mbps, 3),
        "pages-per-second": round(metrics.pages_per_second),
        "precopy-bytes": metrics.precopy_bytes,
        "downtime-bytes": metrics.downtime_bytes,
        "postcopy-bytes": metrics.postcopy_bytes,
        "multifd-bytes": metrics.multifd_bytes,
    }
    if metrics.postcopy_run_at is not None:  # QEMU's MigrationStats member
        ram["postcopy-requests"] = metrics.postcopy_requests
    if metrics.compression_raw_bytes:
        ratio = metrics.compression_raw_bytes / max(1, metrics.compression_sent_bytes)
        ram["x-compression-ratio"] = round(ratio, 3)
    if status is not S.COMPLETED:
        ram["remaining"] = metrics.remaining_bytes
        ram["dirty-pages-rate"] = round(metrics.dirty_pages_rate)
    return ram


def dest_info(record: IncomingRecord | None) -> dict[str, object]:
    """The `query-migrate` reply of a destination: its newest incoming migration.

    QEMU shows a destination's status and `error-desc`; livemig adds the migration id and the
    VM's UUID (what `livemig resolve` matches).
    """
    if record is None:
        return {}
    info: dict[str, object] = {
        "status": str(record.status),
        "x-migration-id": record.migration_id,
        "x-vm-uuid": record.uuid,
    }
    if record.reason is not None:
        info["error-desc"] = record.reason
    if record.metrics.preempt_pages:
        info["x-preempt-pages"] = record.metrics.preempt_pages
    return info
