"""The source's convergence controls: the throttle and the timeout policies, as actions.

`SourceMigration` owns the status; this object reports the precopy passes (MIGRATION_PASS)
and turns what the throttle policy (`migration.throttle`, inside the precopy rounds) and the
timeout policies (`migration.timeouts`) decide into metrics, `ThrottleVm` actions and log
lines. A new throttle fires the machine's THROTTLE row (`on_throttle`); a policy that gives up
is returned to the machine (`GiveUp`), which ends the migration. The machine lifts the
throttle (`lift`) when the migration ends, whichever way, or goes in doubt (the VM is stopped
from the switchover on, as in QEMU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from migration import actions as act
from migration.metrics import TimeoutAction, elapsed_ms
from migration.throttle import OFF, ThrottleSetting
from migration.timeouts import TimeoutPolicy

if TYPE_CHECKING:
    from collections.abc import Callable

    from migration.metrics import SourceMetrics
    from migration.outbox import Outbox
    from migration.params import MigrationCapabilities, MigrationParameters
    from migration.precopy import Precopy


@dataclass(frozen=True, slots=True)
class GiveUp:
    """A timeout policy with `x-timeout-action cancel` expired: end the migration."""

    policy: str
    reason: str


@dataclass(frozen=True, slots=True)
class SwitchToPostcopy:
    """A timeout policy with `x-timeout-action postcopy` expired: switch to postcopy."""

    policy: str


@dataclass(frozen=True, slots=True)
class Throttle:
    """Slow the guest down (or further): `setting`, because `why`."""

    setting: ThrottleSetting
    why: str


class Convergence:
    """The throttle and timeout policies of one outgoing migration.

    Args:
        precopy: the precopy rounds of now (None before setup is done).
        on_throttle: called before a new throttle applies (the machine fires its row).
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        metrics: SourceMetrics,
        caps: MigrationCapabilities,
        precopy: Callable[[], Precopy | None],
        on_throttle: Callable[[], None],
        now: float,
    ) -> None:
        self._out = outbox
        self._metrics = metrics
        self._caps = caps
        self._precopy = precopy
        self._on_throttle = on_throttle
        self.timeouts = TimeoutPolicy(started_at=now)

    def next_deadline(self, params: MigrationParameters) -> float | None:
        """When a timeout policy would expire (the machine arms a timer while active)."""
        return self.timeouts.next_deadline(params, self._metrics.total_bytes)

    def report_passes(self, params: MigrationParameters) -> None:
        """MIGRATION_PASS for each dirty sync since the last look, and the throttle they chose."""
        precopy = self._precopy()
        if precopy is None:
            return
        passes = precopy.new_syncs(self._out.now, params)
        if self._caps.events:
            for sync in passes.syncs:
                self._out.do(act.EmitEvent(name="MIGRATION_PASS", data={"pass": sync}))
        if passes.throttle is not None:
            why = "the guest dirtied more than the threshold share of what was sent, twice"
            self._throttle(Throttle(setting=passes.throttle, why=why))

    def check(self, params: MigrationParameters) -> GiveUp | SwitchToPostcopy | None:
        """Consult the timeout policies (while active): give up, or go on (maybe throttled)."""
        metrics = self._metrics
        expired = self.timeouts.check(self._out.now, params, metrics)
        if expired is None:
            return None
        at_ms = elapsed_ms(self._out.now - metrics.started_at)
        metrics.timeout_actions.append(
            TimeoutAction(policy=expired.policy, action=expired.action, at_ms=at_ms)
        )
        self._out.log(
            "timeout_policy_expired",
            level=act.Level.WARNING,
            policy=expired.policy,
            action=expired.action,
            detail=expired.detail,
        )
        if expired.action == "postcopy" and self._caps.postcopy_ram:
            return SwitchToPostcopy(policy=expired.policy)
        if expired.action != "throttle":
            metrics.ended_by = expired.policy
            reason = (
                f"migration ended by policy {expired.policy} ({expired.detail}; "
                "x-timeout-action cancel): the VM keeps running here"
            )
            return GiveUp(policy=expired.policy, reason=reason)
        precopy = self._precopy()
        if precopy is not None:
            setting = precopy.throttle.force(params, self._caps, metrics.dirty_sync_count)
            if setting is not None:
                why = f"{expired.policy} expired: {expired.detail}"
                self._throttle(Throttle(setting=setting, why=why))
        return None

    def _throttle(self, throttle: Throttle) -> None:
        """Apply a new throttle: the machine's row, the metrics, the VM, the log."""
        self._on_throttle()
        precopy, metrics, setting = self._precopy(), self._metrics, throttle.setting
        metrics.cpu_throttle_percent = setting.cpu_percent
        metrics.dirty_limit_mb_per_s = setting.dirty_limit_mb_per_s
        metrics.throttle_changes += 1
        if precopy is not None:
            metrics.throttle_started_at_pass = precopy.throttle.started_at_pass
        self._out.do(
            act.ThrottleVm(
                cpu_percent=setting.cpu_percent,
                dirty_limit_mb_per_s=setting.dirty_limit_mb_per_s,
            )
        )
        self._out.log(
            "throttle_changed",
            cpu_throttle_percent=setting.cpu_percent,
            dirty_limit_mb_per_s=setting.dirty_limit_mb_per_s,
            dirty_syncs=metrics.dirty_sync_count,
            why=throttle.why,
        )

    def lift(self) -> None:
        """The migration ends or goes in doubt: the guest runs freely again.

        QEMU's `cpu_throttle_stop` and `migration_cancel_dirty_limit`.
        """
        precopy = self._precopy()
        if precopy is None or not precopy.throttle.lift():
            return
        self._metrics.cpu_throttle_percent = OFF.cpu_percent
        self._metrics.dirty_limit_mb_per_s = OFF.dirty_limit_mb_per_s
        self._out.do(act.ThrottleVm())
        self._out.log("throttle_lifted", dirty_syncs=self._metrics.dirty_sync_count)
