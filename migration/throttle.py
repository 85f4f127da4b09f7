"""Slow the guest down so that precopy converges: QEMU's auto-converge and dirty-limit.

QEMU (ram.c `migration_trigger_throttle`, `mig_throttle_guest_down`,
`migration_dirty_limit_guest`), as a pure object the precopy rounds consult at each dirty sync:

- a *period* closes at the first sync more than one second (`x-throttle-trigger-period`, 1000 ms
  by default: QEMU's fixed value) after the last one; it compares the
  bytes the guest newly dirtied in the period with `throttle-trigger-threshold` % of the bytes
  sent in it (QEMU syncs only at the end of a pass, so its periods last one second plus up to a
  pass; here the precopy rounds force a sync as soon as a period is due, see `period_due`);
- the second time dirtying exceeds that share (not necessarily in a row, as in QEMU), the guest
  is slowed down: with auto-converge, its vCPUs first run `100 - cpu-throttle-initial` % of the
  time, then `cpu-throttle-increment` more points are taken each time (with
  `cpu-throttle-tailslow`, only as many as bring the dirty rate to the threshold), up to
  `max-cpu-throttle`; with dirty-limit, every vCPU's page writes are capped at
  `vcpu-dirty-limit` MB/s (once, or again if the parameter changed), which slows only writers.

The throttle is lifted when the migration ends, whichever way, or goes in doubt (the source
machine does it; from the switchover on the VM is stopped anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from vmsim import PAGE_SIZE

if TYPE_CHECKING:
    from migration.params import MigrationCapabilities, MigrationParameters

HIGH_PERIODS: Final = 2  # QEMU's dirty_rate_high_cnt: act on the second high period


@dataclass(frozen=True, slots=True)
class ThrottleSetting:
    """How much the guest is slowed down: its vCPUs' run share, and a per-vCPU write cap.

    Attributes:
        cpu_percent: the share of each period the vCPUs sleep (0: not throttled).
        dirty_limit_mb_per_s: each vCPU's page writes are capped at this rate (None: no cap).
    """

    cpu_percent: int = 0
    dirty_limit_mb_per_s: int | None = None

    @property
    def active(self) -> bool:
        """Whether the guest is slowed down at all."""
        return self.cpu_percent > 0 or self.dirty_limit_mb_per_s is not None


OFF: Final = ThrottleSetting()


class ThrottlePolicy:
    """The throttle of one migration: when to start it, how far to push it."""

    def __init__(self, *, now: float, transferred_bytes: int) -> None:
        self.setting = OFF
        self.forced = False  # x-timeout-action throttle turned auto-converge on
        self.started_at_pass: int | None = None
        self._high_periods = 0
        self._period_start_at = now
        self._period_start_bytes = transferred_bytes
        self._period_dirty_pages = 0

    def period_due(self, now: float, params: MigrationParameters) -> bool:
        """Whether the current period is over: the next sync closes it and may throttle."""
        return (now - self._period_start_at) * 1000 > params.throttle_trigger_period_ms

    def on_sync(
        self,
        *,
        now: float,
        new_dirty_pages: int,
        transferred_bytes: int,
        sync: int,
        params: MigrationParameters,
        caps: MigrationCapabilities,
    ) -> ThrottleSetting | None:
        """A dirty sync found `new_dirty_pages`; the new setting when it changes, else None."""
        self._period_dirty_pages += new_dirty_pages
        if not self.period_due(now, params):
            return None
        dirty_bytes = self._period_dirty_pages * PAGE_SIZE
        threshold_bytes = (
            (transferred_bytes - self._period_start_bytes)
            * params.throttle_trigger_threshold_percent
            // 100
        )
        self._period_start_at, self._period_start_bytes = now, transferred_bytes
        self._period_dirty_pages = 0
        auto = caps.auto_converge or self.forced
        if not (auto or caps.dirty_limit) or dirty_bytes <= threshold_bytes:
            return None
        self._high_periods += 1
        if self._high_periods < HIGH_PERIODS:
            return None
        self._high_periods = 0
        if auto:
            percent = self._next_percent(params, threshold_bytes / dirty_bytes)
            setting = ThrottleSetting(cpu_percent=percent)
        else:
            setting = ThrottleSetting(dirty_limit_mb_per_s=params.vcpu_dirty_limit_mb_per_s)
        return self._apply(setting, sync)

    def force(
        self, params: MigrationParameters, caps: MigrationCapabilities, sync: int
    ) -> ThrottleSetting | None:
        """`x-timeout-action throttle`: throttle now, and from now on as auto-converge would.

        With the dirty-limit capability (which excludes auto-converge) the dirty limit is
        applied now instead. Returns the new setting when it changes.
        """
        if caps.dirty_limit:
            setting = ThrottleSetting(dirty_limit_mb_per_s=params.vcpu_dirty_limit_mb_per_s)
        else:
            self.forced = True
            setting = ThrottleSetting(cpu_percent=self._next_percent(params, None))
        self._high_periods = 0
        return self._apply(setting, sync)

    def _next_percent(self, params: MigrationParameters, wanted_share: float | None) -> int:
        """QEMU's mig_throttle_guest_down.

        `wanted_share` is the threshold over the bytes dirtied in the period: with
        cpu-throttle-tailslow, the step is only as large as slowing the vCPUs to that share
        of their current run time needs.
        """
        now = self.setting.cpu_percent
        if now == 0:
            return params.cpu_throttle_initial_percent
        increment = params.cpu_throttle_increment_percent
        if params.cpu_throttle_tailslow and wanted_share is not None:
            cpu_now = 100 - now
            increment = min(int(cpu_now - cpu_now * wanted_share), increment)
        return min(now + increment, params.max_cpu_throttle_percent)

    def _apply(self, setting: ThrottleSetting, sync: int) -> ThrottleSetting | None:
        if setting == self.setting:
            return None
        if self.started_at_pass is None:
            self.started_at_pass = sync
        self.setting = setting
        return setting

    def lift(self) -> bool:
        """Stop throttling (the migration ends); whether it was on."""
        was_active = self.setting.active
        self.setting = OFF
        return was_active
