"""Counters of one migration and the `query-migrate` reply built from them.

Field names and meanings follow QEMU's `MigrationInfo` and `MigrationStats`
(qapi/migration.json) and its rules for which members appear in which status
(`fill_source_migration_info`, `populate_time_info`, `populate_ram_info`). livemig's own extras
start with `x-`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmm.status import MigrationStatus

if TYPE_CHECKING:
    from vmm.precopy import ConvergencePolicy, DirtyRateMeter

_RAM_STATUSES = frozenset(
    {
        MigrationStatus.ACTIVE,
        MigrationStatus.PRE_SWITCHOVER,
        MigrationStatus.DEVICE,
        MigrationStatus.CANCELLING,
        MigrationStatus.IN_DOUBT,
        MigrationStatus.COMPLETED,
    }
)


@dataclass(kw_only=True, slots=True)
class DowntimeMarks:
    """Instants of the switchover, on the source's clock (seconds), to split the downtime."""

    stopped_at: float | None = None
    final_ram_sent_at: float | None = None
    devices_sent_at: float | None = None
    loaded_at: float | None = None
    resumed_at: float | None = None

    def breakdown_ms(self) -> dict[str, int]:
        """Downtime phases: final RAM, device state, destination load+check, handover+resume."""
        marks = [
            ("final-ram", self.final_ram_sent_at),
            ("device-state", self.devices_sent_at),
            ("load-and-check", self.loaded_at),
            ("handover", self.resumed_at),
        ]
        phases: dict[str, int] = {}
        previous = self.stopped_at
        for name, at in marks:
            if previous is None or at is None:
                break
            phases[name] = _ms(at - previous)
            previous = at
        return phases


@dataclass(kw_only=True, slots=True)
class OutgoingStats:
    """Everything `query-migrate` reports for an outgoing migration."""

    page_size: int
    total_bytes: int
    started_at: float
    setup_done_at: float | None = None
    ended_at: float | None = None
    transferred_bytes: int = 0
    bytes_at_stop: int | None = None
    normal_pages: int = 0
    zero_pages: int = 0
    remaining_bytes: int = 0
    dirty_sync_count: int = 0
    downtime: DowntimeMarks = field(default_factory=DowntimeMarks)
    error_desc: str | None = None

    def count_batch(self, *, normal_pages: int, zero_pages: int) -> None:
        """Account one batch of pages queued for sending."""
        self.normal_pages += normal_pages
        self.zero_pages += zero_pages

    @property
    def precopy_bytes(self) -> int:
        """Bytes sent while the VM ran."""
        return self.transferred_bytes if self.bytes_at_stop is None else self.bytes_at_stop

    @property
    def downtime_bytes(self) -> int:
        """Bytes sent while the VM was stopped."""
        return 0 if self.bytes_at_stop is None else self.transferred_bytes - self.bytes_at_stop

    def downtime_ms(self) -> int | None:
        """Stop to the destination's RESUMED, once known."""
        marks = self.downtime
        if marks.stopped_at is None or marks.resumed_at is None:
            return None
        return _ms(marks.resumed_at - marks.stopped_at)


def outgoing_info(
    status: MigrationStatus,
    stats: OutgoingStats | None,
    *,
    now: float,
    policy: ConvergencePolicy | None,
    dirty_rate: DirtyRateMeter | None,
) -> dict[str, object]:
    """The `query-migrate` reply of a source, member by member as QEMU decides."""
    if status is MigrationStatus.NONE or stats is None:
        return {}
    info: dict[str, object] = {"status": str(status)}
    if status in _RAM_STATUSES:
        info.update(_time_info(status, stats, now=now, policy=policy))
        info["ram"] = _ram_info(status, stats, policy=policy, dirty_rate=dirty_rate)
    if status is MigrationStatus.COMPLETED:
        info["x-downtime-breakdown"] = stats.downtime.breakdown_ms()
        info["x-iterations"] = stats.dirty_sync_count
    if stats.error_desc is not None and status in (
        MigrationStatus.FAILED,
        MigrationStatus.IN_DOUBT,
        MigrationStatus.CANCELLED,
    ):
        info["error-desc"] = stats.error_desc
    return info


def _time_info(
    status: MigrationStatus,
    stats: OutgoingStats,
    *,
    now: float,
    policy: ConvergencePolicy | None,
) -> dict[str, object]:
    end = stats.ended_at if stats.ended_at is not None else now
    info: dict[str, object] = {"total-time": _ms(end - stats.started_at)}
    if stats.setup_done_at is not None:
        info["setup-time"] = _ms(stats.setup_done_at - stats.started_at)
    downtime = stats.downtime_ms()
    if status is MigrationStatus.COMPLETED and downtime is not None:
        info["downtime"] = downtime
    elif policy is not None:
        info["expected-downtime"] = policy.expected_downtime_ms
    return info


def _ram_info(
    status: MigrationStatus,
    stats: OutgoingStats,
    *,
    policy: ConvergencePolicy | None,
    dirty_rate: DirtyRateMeter | None,
) -> dict[str, object]:
    ram: dict[str, object] = {
        "transferred": stats.transferred_bytes,
        "total": stats.total_bytes,
        "duplicate": stats.zero_pages,
        "normal": stats.normal_pages,
        "normal-bytes": stats.normal_pages * stats.page_size,
        "dirty-sync-count": stats.dirty_sync_count,
        "page-size": stats.page_size,
        "mbps": round(policy.mbps, 3) if policy is not None else 0.0,
        "pages-per-second": round(policy.pages_per_second) if policy is not None else 0,
        "precopy-bytes": stats.precopy_bytes,
        "downtime-bytes": stats.downtime_bytes,
        "postcopy-bytes": 0,
    }
    if status is not MigrationStatus.COMPLETED:
        ram["remaining"] = stats.remaining_bytes
        ram["dirty-pages-rate"] = round(dirty_rate.pages_per_second) if dirty_rate else 0
    return ram


def incoming_info(status: MigrationStatus, error_desc: str | None) -> dict[str, object]:
    """The `query-migrate` reply of a destination: status, and error-desc once failed."""
    if status is MigrationStatus.NONE:
        return {}
    info: dict[str, object] = {"status": str(status)}
    if error_desc is not None and status in (MigrationStatus.FAILED, MigrationStatus.IN_DOUBT):
        info["error-desc"] = error_desc
    return info


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000.0))
