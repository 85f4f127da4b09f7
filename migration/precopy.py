"""Precopy rounds: what to send next while the guest runs, and when to switch over.

QEMU's `migration_iteration_run` and `ram_save_iterate` (../shared/reference/qemu-migration.md
§3.3-3.4), as a pure object the source machine consults:

- a *round* starts with a decision: update the counters (a 100 ms bandwidth window may close),
  take the cheap pending estimate, sync the dirty log only when the estimate fits the threshold,
  and switch over when what is pending fits it (`ConvergencePolicy`);
- otherwise the round sends batches of dirty pages for at most `ITERATE_MAX_S` (QEMU's MAX_WAIT),
  within the `max-bandwidth` budget of the current 100 ms slot (`RateLimiter`); when the budget
  is spent the round ends and the next one starts when the slot does;
- each dirty sync feeds the dirty-rate meter and the throttle (`migration.throttle`); while a
  throttle may act, a sync is forced as soon as a throttle period (one second) is due. QEMU
  decides only at the end of a pass, plus a sync forced after 5 s without one (9.2's
  `cpu_throttle_dirty_sync_timer`, for slow links where a pass takes minutes); its sync costs a
  KVM ioctl per memory slot, ours swaps a bitmap. Deciding on time matters on fast links too:
  with passes of 0.4-0.7 s the busy guest was throttled 2.5-2.9 s after `migrate` instead of
  2.2-2.3 s, after 4.0-4.8 GB instead of 3.2-3.4 GB (`python -m bench busy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from migration.metrics import elapsed_ms
from migration.passes import PassSample
from migration.policy import ConvergencePolicy, DirtyRateMeter, RateLimiter, WindowSample
from migration.throttle import ThrottlePolicy, ThrottleSetting
from vmsim import PAGE_SIZE, state_iterate, state_pending_estimate, state_pending_exact

if TYPE_CHECKING:
    from migration.metrics import SourceMetrics
    from migration.params import MigrationCapabilities, MigrationParameters
    from vmsim import Machine, RamStats, SectionPart

MAX_BATCH_PAGES: Final = 4096
"""16 MiB of page data per frame at most (protocol Limits.max_data_bytes): fewer, larger frames
halve the per-frame cost on both sides next to 4 MiB ones (bench/, throughput figure)."""
ITERATE_MAX_S: Final = 0.05
"""QEMU's MAX_WAIT: one round sends for at most this long, so the counters stay fresh."""
FINAL_BATCH_PAGES: Final = 1024
"""4 MiB frames in the stop-and-copy: the destination loads the last frame after it arrived, with
the VM stopped; a 16 MiB one kept load-and-check at 2-7 ms of a 50 ms downtime, 4 MiB at 1-3
(`python -m bench downtime`, random guest at 60 %)."""
QUEUE_AHEAD_BYTES: Final = MAX_BATCH_PAGES * PAGE_SIZE
"""While sending, keep one batch queued ahead of the kernel: it always has bytes to move while
the next batch is built (a flush to empty left it idle)."""


@dataclass(frozen=True, slots=True)
class Switchover:
    """The round decided: what is pending fits the downtime limit (stop the VM)."""

    pending_bytes: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Send this part, keep one batch queued, then ask again."""

    part: SectionPart


@dataclass(frozen=True, slots=True)
class RoundOver:
    """The round's time is up or the bitmap is empty: drain the channel, then decide again."""


@dataclass(frozen=True, slots=True)
class Throttled:
    """The slot's byte budget is spent: drain the channel, start the next round at `until`."""

    until: float


Step = Batch | RoundOver | Throttled


@dataclass(frozen=True, slots=True)
class Passes:
    """What the dirty syncs since the last look did: their numbers, and a new throttle."""

    syncs: list[int]
    throttle: ThrottleSetting | None = None


class Precopy:
    """The precopy policies of one migration: convergence, dirty rate and the rate limit."""

    def __init__(
        self,
        *,
        machine: Machine,
        metrics: SourceMetrics,
        caps: MigrationCapabilities,
        now: float,
    ) -> None:
        self._machine = machine
        self._metrics = metrics
        self._caps = caps
        self.policy = ConvergencePolicy(now=now, downtime_limit_ms=metrics.expected_downtime_ms)
        self.dirty_rate = DirtyRateMeter(now=now)
        self.limiter = RateLimiter(now=now)
        self.throttle = ThrottlePolicy(now=now, transferred_bytes=metrics.transferred_bytes)
        self._round_ends_at = now
        self._reported_syncs = 0

    def start_round(self, now: float, params: MigrationParameters) -> Switchover | None:
        """Decide at the start of a round: switch over now, or send (None)."""
        policy = self.policy
        policy.downtime_limit_ms = params.downtime_limit_ms
        policy.avail_switchover_bandwidth_bytes_per_s = (
            params.avail_switchover_bandwidth_bytes_per_s
        )
        self.close_window(now)
        registry = self._machine.savevm
        pending = state_pending_estimate(registry)
        if policy.needs_exact(pending) or self._throttle_sync_due(now, params):
            pending = state_pending_exact(registry)
        self._metrics.remaining_bytes = pending
        if self._machine.ram_handler.stats().complete_rounds > 0:
            policy.first_pass_done()
        if policy.can_switchover(pending):
            return Switchover(pending_bytes=pending)
        self._round_ends_at = now + ITERATE_MAX_S
        return None

    def next_step(self, now: float, params: MigrationParameters) -> Step:
        """What to do next within the round."""
        if now >= self._round_ends_at:
            return RoundOver()
        max_pages = self._allowed_pages(now, params)
        if max_pages == 0:
            return Throttled(until=self.limiter.slot_ends_at())
        part = state_iterate(self._machine.savevm, max_pages)
        if part is None:
            return RoundOver()  # the bitmap is empty: the next round decides (sync or switchover)
        return Batch(part=part)

    def sent(self, nbytes: int) -> None:
        """Account bytes queued for a batch against the current slot's budget."""
        self.limiter.consume(nbytes)

    def new_syncs(self, now: float, params: MigrationParameters) -> Passes:
        """The dirty syncs (passes) the RAM handler did since the last call, for MIGRATION_PASS.

        Each one after the setup sync also feeds the dirty-rate meter and the throttle, which
        may decide to slow the guest down (or further).
        """
        ram = self._machine.ram_handler.stats()
        syncs = list(range(self._reported_syncs + 1, ram.dirty_sync_count + 1))
        throttle = None
        for sync in syncs:
            if sync > 1:  # pass 1 (setup) found the whole RAM: no guest writes to count
                self.dirty_rate.record_sync(now=now, dirtied_pages=ram.logged_pages_last_sync)
            self._sample(now, sync, ram)
            if sync == 1:
                continue
            changed = self.throttle.on_sync(
                now=now,
                new_dirty_pages=ram.logged_pages_last_sync,
                transferred_bytes=self._metrics.transferred_bytes,
                sync=sync,
                params=params,
                caps=self._caps,
            )
            throttle = changed or throttle
        self._reported_syncs = ram.dirty_sync_count
        self._metrics.dirty_sync_count = ram.dirty_sync_count
        self._metrics.dirty_pages_rate = self.dirty_rate.pages_per_second
        return Passes(syncs=syncs, throttle=throttle)

    def _sample(self, now: float, sync: int, ram: RamStats) -> None:
        metrics = self._metrics
        setup = sync == 1
        metrics.passes.append(
            PassSample(
                sync=sync,
                at_ms=elapsed_ms(now - metrics.started_at),
                remaining_bytes=ram.dirty_bytes_last_sync,
                dirtied_pages=ram.total_bytes // PAGE_SIZE if setup else ram.logged_pages_last_sync,
                transferred_bytes=metrics.transferred_bytes,
                dirty_pages_rate=self.dirty_rate.pages_per_second,
                mbps=metrics.mbps,
                cpu_throttle_percent=metrics.cpu_throttle_percent,
                dirty_limit_mb_per_s=metrics.dirty_limit_mb_per_s,
            )
        )

    def _throttle_sync_due(self, now: float, params: MigrationParameters) -> bool:
        """Whether a throttle may act and its period is over (a sync now lets it decide)."""
        caps = self._caps
        may_throttle = caps.auto_converge or caps.dirty_limit or self.throttle.forced
        return may_throttle and self.throttle.period_due(now, params)

    def close_window(self, now: float) -> bool:
        """Close the bandwidth window if it is old enough; copy the figures into the metrics."""
        metrics, policy = self._metrics, self.policy
        closed = policy.update(
            WindowSample(
                now=now,
                transferred_bytes=metrics.transferred_bytes,
                transferred_pages=metrics.transferred_pages,
                dirty_bytes_last_sync=self._machine.ram_handler.stats().dirty_bytes_last_sync,
                dirty_pages_rate=self.dirty_rate.pages_per_second,
            )
        )
        if closed:
            metrics.mbps = policy.mbps
            metrics.pages_per_second = policy.pages_per_second
            metrics.threshold_bytes = policy.threshold_bytes
            metrics.expected_downtime_ms = policy.expected_downtime_ms
        return closed

    def _allowed_pages(self, now: float, params: MigrationParameters) -> int:
        allowance = self.limiter.allowance_bytes(
            now=now, limit_bytes_per_s=params.max_bandwidth_bytes_per_s
        )
        if allowance is None:
            return MAX_BATCH_PAGES
        if allowance == 0:
            return 0
        return max(1, min(MAX_BATCH_PAGES, allowance // PAGE_SIZE))
