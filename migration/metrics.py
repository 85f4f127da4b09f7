"""Typed metrics of one migration, one object per side (cloud-hypervisor's MigrationContext).

The state machines update them; `query-migrate` (`migration.info`), the progress bar, the logs
and the benchmarks read them, and nothing else keeps counters. A destination's metrics live in
its ledger record, so they outlive the connection that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from migration.passes import PassLog
from vmsim import PAGE_SIZE

if TYPE_CHECKING:
    from protocol import ErrorCode


def error_cause(code: ErrorCode) -> str:
    """A failure's cause as a short, bounded label: the wire error code's name, dashed."""
    return code.name.lower().replace("_", "-")


def elapsed_ms(seconds: float) -> int:
    """A non-negative duration in whole milliseconds."""
    return max(0, round(seconds * 1000.0))


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
            phases[name] = elapsed_ms(at - previous)
            previous = at
        return phases


@dataclass(frozen=True, kw_only=True, slots=True)
class TimeoutAction:
    """A timeout policy acted: which one, what it did, when (ms after `migrate`)."""

    policy: str
    action: str
    at_ms: int

    def to_qmp(self) -> dict[str, object]:
        """As shown in `query-migrate` (`x-timeout-actions`) and the summary log line."""
        return {"policy": self.policy, "action": self.action, "at-ms": self.at_ms}


@dataclass(kw_only=True, slots=True)
class SourceMetrics:
    """Everything an outgoing migration counts and measures.

    Attributes:
        page_size: bytes per page.
        total_bytes: guest RAM size.
        started_at: when `migrate` started it (the source's clock, seconds).
        setup_done_at: when setup ended (status active).
        ended_at: when it completed, failed or was cancelled.
        transferred_bytes: bytes the kernel took on every channel of the migration.
        bytes_at_stop: `transferred_bytes` when the VM stopped.
        normal_pages: pages sent as data.
        zero_pages: pages sent as zero pages (QEMU's `duplicate`).
        remaining_bytes: bytes still to send, as of the last estimate or sync.
        dirty_sync_count: dirty-log syncs (passes), the setup sync included.
        dirty_pages_rate: pages the guest dirties per second (QEMU, updated once a second).
        mbps: bandwidth of the last closed 100 ms window, megabits per second.
        pages_per_second: pages sent per second in the last closed window.
        threshold_bytes: what fits the downtime limit at the planning bandwidth.
        expected_downtime_ms: QEMU's expected downtime.
        downtime: the switchover's instants.
        cpu_throttle_percent: auto-converge's current throttle (0: the vCPUs run freely).
        dirty_limit_mb_per_s: the dirty-limit cap on every vCPU now (None: no cap).
        throttle_started_at_pass: the pass (dirty sync) at which throttling began.
        throttle_changes: how many times the throttle was set (lifting not counted).
        timeout_actions: the timeout policies that acted, in order, and what they did.
        ended_by: the timeout policy that ended it (x-timeout-action cancel), if one did.
        error_desc: why it failed (or is in doubt); None when cancelled (as QEMU).
        passes: one sample per dirty sync (bounded), for the migration's record.
        multifd_bytes: of `transferred_bytes`, those sent on multifd channels.
        compression_raw_bytes: page bytes multifd-compression was given.
        compression_sent_bytes: what they went as (raw where they did not shrink).
        xbzrle_cache: QEMU's `xbzrle-cache` figures, with the xbzrle capability.
        digest_check: `match` or `mismatch` once the destination's digest was compared.
        error_code: the code of the error that failed it (sent in ABORT), if one did.
        postcopy_run_at: when POSTCOPY_RUN left (the guest may run there from then on).
        bytes_at_postcopy_run: `transferred_bytes` then.
        postcopy_missing_pages: pages the destination lacked at the switch.
        postcopy_requests: REQ_PAGES the destination sent (QEMU's `postcopy-requests`).
        precopy_breaks: times the connection broke in precopy and the source reconnected (or
            tried to: `x-precopy-resume-ms`); `reconnecting` while it does.
    """

    page_size: int
    total_bytes: int
    started_at: float
    setup_done_at: float | None = None
    ended_at: float | None = None
    transferred_bytes: int = 0
    multifd_bytes: int = 0
    compression_raw_bytes: int = 0
    compression_sent_bytes: int = 0
    xbzrle_cache: dict[str, object] | None = None
    bytes_at_stop: int | None = None
    postcopy_run_at: float | None = None
    bytes_at_postcopy_run: int | None = None
    postcopy_missing_pages: int = 0
    postcopy_requests: int = 0
    precopy_breaks: int = 0
    reconnecting: bool = False
    precopy_break_passes: list[int] = field(default_factory=list)  # the pass of each break
    postcopy_after_pass: int | None = None  # the pass after which it switched to postcopy
    normal_pages: int = 0
    zero_pages: int = 0
    remaining_bytes: int = 0
    dirty_sync_count: int = 0
    dirty_pages_rate: float = 0.0
    mbps: float = 0.0
    pages_per_second: float = 0.0
    threshold_bytes: int = 0
    expected_downtime_ms: int = 0
    downtime: DowntimeMarks = field(default_factory=DowntimeMarks)
    cpu_throttle_percent: int = 0
    dirty_limit_mb_per_s: int | None = None
    throttle_started_at_pass: int | None = None
    throttle_changes: int = 0
    timeout_actions: list[TimeoutAction] = field(default_factory=list)
    ended_by: str | None = None
    error_desc: str | None = None
    passes: PassLog = field(default_factory=PassLog)
    digest_check: str | None = None
    error_code: ErrorCode | None = None

    @classmethod
    def starting(cls, *, ram_bytes: int, downtime_limit_ms: int, now: float) -> SourceMetrics:
        """The figures of a migration of `ram_bytes` of guest RAM that starts `now`."""
        return cls(
            page_size=PAGE_SIZE,
            total_bytes=ram_bytes,
            started_at=now,
            expected_downtime_ms=downtime_limit_ms,
        )

    @property
    def transferred_pages(self) -> int:
        """Pages sent, of any kind."""
        return self.normal_pages + self.zero_pages

    @property
    def precopy_bytes(self) -> int:
        """Bytes sent while the VM ran."""
        return self.transferred_bytes if self.bytes_at_stop is None else self.bytes_at_stop

    @property
    def downtime_bytes(self) -> int:
        """Bytes sent while the VM was stopped (in postcopy: until POSTCOPY_RUN left)."""
        if self.bytes_at_stop is None:
            return 0
        end = self.transferred_bytes
        return (end if self.bytes_at_postcopy_run is None else self.bytes_at_postcopy_run) - (
            self.bytes_at_stop
        )

    @property
    def postcopy_bytes(self) -> int:
        """Bytes sent after POSTCOPY_RUN (QEMU's `postcopy-bytes`)."""
        run = self.bytes_at_postcopy_run
        return 0 if run is None else self.transferred_bytes - run

    def downtime_ms(self) -> int | None:
        """Stop to the destination's RESUMED (or, without a handover, to the end), once known.

        In postcopy the guest runs again at the destination from POSTCOPY_RUN on: stop to RUN
        (QEMU's postcopy downtime), not to the end of the page push.
        """
        marks = self.downtime
        end = self.postcopy_run_at if self.postcopy_run_at is not None else marks.resumed_at
        if marks.stopped_at is None or end is None:
            return None
        return elapsed_ms(end - marks.stopped_at)

    def total_ms(self, now: float) -> int:
        """From `migrate` to the end, or to `now` while it runs."""
        return elapsed_ms((self.ended_at if self.ended_at is not None else now) - self.started_at)

    def summary(self, now: float) -> dict[str, object]:
        """The canonical figures of a finished migration, for its summary log line."""
        return {
            "total_ms": self.total_ms(now),
            "downtime_ms": self.downtime_ms(),
            "downtime_breakdown_ms": self.downtime.breakdown_ms(),
            "transferred_bytes": self.transferred_bytes,
            "normal_pages": self.normal_pages,
            "zero_pages": self.zero_pages,
            "dirty_syncs": self.dirty_sync_count,
            "throttle_started_at_pass": self.throttle_started_at_pass,
            "throttle_changes": self.throttle_changes,
            "precopy_breaks_at_pass": list(self.precopy_break_passes),
            "postcopy_after_pass": self.postcopy_after_pass,
            "timeout_actions": [action.to_qmp() for action in self.timeout_actions],
            "ended_by": self.ended_by,
        }


@dataclass(kw_only=True, slots=True)
class DestMetrics:
    """Everything an incoming migration counts.

    Attributes:
        started_at: when its configuration was accepted (the destination's clock, seconds).
        ram_ready_at: when guest RAM was allocated and pre-faulted (OPEN_ACK).
        loaded_at: when the whole stream was loaded and checked (LOADED).
        ended_at: when it was committed or discarded.
        received_bytes: bytes received on its channels.
        normal_pages: pages received as data.
        zero_pages: pages received as zero pages.
        devices: devices whose state was loaded, by (idstr, instance_id).
        postcopy_run_at: when POSTCOPY_RUN arrived (the guest runs here from then on).
        postcopy_requests: REQ_PAGES sent (QEMU's `postcopy-requests` is the source's count).
    """

    started_at: float
    ram_ready_at: float | None = None
    loaded_at: float | None = None
    ended_at: float | None = None
    received_bytes: int = 0
    normal_pages: int = 0
    zero_pages: int = 0
    devices: set[tuple[str, int]] = field(default_factory=set)
    postcopy_run_at: float | None = None
    postcopy_requests: int = 0
    preempt_pages: int = 0  # pages that came on the postcopy-preempt channel

    def summary(self) -> dict[str, object]:
        """The canonical figures of a load, for its log line."""
        return {
            "received_bytes": self.received_bytes,
            "normal_pages": self.normal_pages,
            "zero_pages": self.zero_pages,
            "devices": len(self.devices),
        }
