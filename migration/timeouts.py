"""Migrations that end by policy: KubeVirt's completion and progress timeouts, QEMU's names.

- `x-completion-timeout-per-gib` (KubeVirt's `completionTimeoutPerGiB`): the migration may take
  this many seconds per GiB of guest RAM, counted from `migrate`;
- `x-progress-timeout` (KubeVirt's `progressTimeout`): it must make progress at least this
  often: a new pass (dirty sync) or remaining bytes lower than ever before;
- `x-timeout-action`: what happens when one expires: `cancel` (the migration gives up, the VM
  runs on where it was) or `throttle` (auto-converge is turned on for the rest of the
  migration, once).

A pure object the precopy rounds consult; 0 turns a timeout off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from migration.metrics import SourceMetrics
    from migration.params import MigrationParameters

GIB: Final = 1 << 30
COMPLETION: Final = "x-completion-timeout-per-gib"
PROGRESS: Final = "x-progress-timeout"


@dataclass(frozen=True, slots=True)
class Expired:
    """A timeout policy ran out: which one, why, and the action to take."""

    policy: str
    detail: str
    action: str


class TimeoutPolicy:
    """The completion and progress deadlines of one migration."""

    def __init__(self, *, started_at: float) -> None:
        self._started_at = started_at
        self._last_progress_at = started_at
        self._lowest_remaining: int | None = None
        self._syncs = 0
        self._acted: set[str] = set()

    def check(
        self, now: float, params: MigrationParameters, metrics: SourceMetrics
    ) -> Expired | None:
        """At the start of a round: a policy that expired now (each acts once), or None."""
        self._note_progress(now, metrics)
        for expired in (self._completion(now, params, metrics), self._progress(now, params)):
            if expired is not None and expired.policy not in self._acted:
                self._acted.add(expired.policy)
                return expired
        return None

    def next_deadline(self, params: MigrationParameters, total_bytes: int) -> float | None:
        """When a policy that has not acted yet would expire if nothing changes (None: never).

        A link that stalls completely sends nothing and syncs nothing, so the machine cannot
        wait for a round to look: it arms a timer for this.
        """
        deadlines = []
        if params.completion_timeout_per_gib_s and COMPLETION not in self._acted:
            allowed_s = params.completion_timeout_per_gib_s * max(total_bytes, 1) / GIB
            deadlines.append(self._started_at + allowed_s)
        if params.progress_timeout_s and PROGRESS not in self._acted:
            deadlines.append(self._last_progress_at + params.progress_timeout_s)
        return min(deadlines, default=None)

    def _note_progress(self, now: float, metrics: SourceMetrics) -> None:
        remaining = metrics.remaining_bytes
        new_pass = metrics.dirty_sync_count > self._syncs
        lower = self._lowest_remaining is None or remaining < self._lowest_remaining
        if new_pass or lower:
            self._last_progress_at = now
        self._syncs = metrics.dirty_sync_count
        if lower:
            self._lowest_remaining = remaining

    def _completion(
        self, now: float, params: MigrationParameters, metrics: SourceMetrics
    ) -> Expired | None:
        per_gib_s = params.completion_timeout_per_gib_s
        if per_gib_s == 0:
            return None
        allowed_s = per_gib_s * max(metrics.total_bytes, 1) / GIB
        elapsed_s = now - self._started_at
        if elapsed_s < allowed_s:
            return None
        gib = metrics.total_bytes / GIB
        detail = f"{per_gib_s} s per GiB of {gib:g} GiB allows {allowed_s:.1f} s"
        return Expired(policy=COMPLETION, detail=detail, action=params.timeout_action)

    def _progress(self, now: float, params: MigrationParameters) -> Expired | None:
        timeout_s = params.progress_timeout_s
        if timeout_s == 0:
            return None
        still_s = now - self._last_progress_at
        if still_s < timeout_s:
            return None
        detail = f"no new pass and no drop of the remaining bytes for {timeout_s} s"
        return Expired(policy=PROGRESS, detail=detail, action=params.timeout_action)
