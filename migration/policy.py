"""The precopy convergence policy, as QEMU decides it, with time passed in (no clock here).

QEMU (migration.c `migration_update_counters`, `migration_iteration_run`):
- every window of at least 100 ms, bandwidth = bytes sent in the window / window length, and the
  switchover threshold = expected bandwidth x downtime-limit, where the expected bandwidth is
  `avail-switchover-bandwidth` when set and the measured one otherwise;
- one difference: QEMU plans with the last window alone; livemig plans with the *lowest* of the
  last few windows (half a second), because one fast 100 ms window on a noisy host made the
  stop-and-copy overshoot the limit (measured: 419 ms for a 300 ms limit, bench/ has the runs);
- the cheap pending estimate is compared with the threshold; only when it falls *below* the
  threshold is the exact count taken (a dirty-bitmap sync, which costs);
- switchover when the pending bytes are at or under the threshold, and (livemig) only once a
  window after the first full pass was measured: first-pass windows send long runs of
  consecutive pages, the switchover sends scattered re-dirtied ones, which move at about two
  thirds of that rate here; planning with first-pass windows alone overshot a 50 ms limit in 18
  of 20 migrations of a `random` guest at 60 % of the bandwidth (`python -m bench downtime`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

WINDOW_S: Final = 0.1  # QEMU BUFFER_DELAY
PLANNING_WINDOWS: Final = 5  # plan the switchover with the slowest of this many recent windows
DIRTY_RATE_PERIOD_S: Final = 1.0  # QEMU updates dirty-pages-rate at most once a second
_MIN_WINDOW_BYTES_FOR_DOWNTIME: Final = 10_000
_CLOCK_EPSILON_S: Final = 1e-9  # QEMU's guard before trusting expected-downtime


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowSample:
    """Totals at the end of a window, read from the outgoing migration's counters."""

    now: float
    transferred_bytes: int
    transferred_pages: int
    dirty_bytes_last_sync: int
    dirty_pages_rate: float


class ConvergencePolicy:
    """Bandwidth windows, switchover threshold and expected downtime for one migration."""

    def __init__(self, *, now: float, downtime_limit_ms: int) -> None:
        self._window_start_at = now
        self._window_start_bytes = 0
        self._window_start_pages = 0
        self.downtime_limit_ms = downtime_limit_ms
        self.avail_switchover_bandwidth_bytes_per_s = 0
        self.bandwidth_bytes_per_ms = 0.0
        self._recent_bytes_per_ms: deque[float] = deque(maxlen=PLANNING_WINDOWS)
        self.threshold_bytes = 0
        self.expected_downtime_ms = downtime_limit_ms  # QEMU starts it at the limit
        self.mbps = 0.0
        self.pages_per_second = 0.0
        self._first_pass_done = False
        self._windows_after_first_pass = 0

    def update(self, sample: WindowSample) -> bool:
        """Close the window if it is at least 100 ms old; return whether it did."""
        window_s = sample.now - self._window_start_at
        if window_s < WINDOW_S - _CLOCK_EPSILON_S:  # 10.1 - 10.0 is 0.0999...96 in floats
            return False
        window_bytes = sample.transferred_bytes - self._window_start_bytes
        window_pages = sample.transferred_pages - self._window_start_pages
        self.bandwidth_bytes_per_ms = window_bytes / (window_s * 1000.0)
        if window_bytes > 0:  # an idle window (nothing to send) says nothing about the link
            self._recent_bytes_per_ms.append(self.bandwidth_bytes_per_ms)
            self._windows_after_first_pass += self._first_pass_done
        self.mbps = window_bytes * 8.0 / window_s / 1e6
        self.pages_per_second = window_pages / window_s
        expected = self.expected_bandwidth_bytes_per_ms()
        self.threshold_bytes = int(expected * self.downtime_limit_ms)
        if (
            sample.dirty_pages_rate > 0
            and window_bytes > _MIN_WINDOW_BYTES_FOR_DOWNTIME
            and expected > 0
        ):
            self.expected_downtime_ms = round(sample.dirty_bytes_last_sync / expected)
        self._window_start_at = sample.now
        self._window_start_bytes = sample.transferred_bytes
        self._window_start_pages = sample.transferred_pages
        return True

    def expected_bandwidth_bytes_per_ms(self) -> float:
        """The bandwidth the switchover is planned with (QEMU `expected_bw_per_ms`)."""
        if self.avail_switchover_bandwidth_bytes_per_s > 0:
            return self.avail_switchover_bandwidth_bytes_per_s / 1000.0
        return min(self._recent_bytes_per_ms, default=self.bandwidth_bytes_per_ms)

    def needs_exact(self, pending_estimate_bytes: int) -> bool:
        """Whether the estimate is low enough to pay for an exact count (a dirty sync).

        QEMU tests `estimate < threshold`. livemig uses `<=`: an estimate of 0 against a
        threshold of 0 (no window closed yet, e.g. a first pass faster than 100 ms) means only
        "nothing left from the last sync"; switching over on it sent a whole re-dirtied RAM in
        the downtime (99 ms for 256 MiB, measured). The exact count settles it.
        """
        return pending_estimate_bytes <= self.threshold_bytes

    def first_pass_done(self) -> None:
        """The whole RAM was sent once: windows from now on measure re-dirtied pages."""
        self._first_pass_done = True

    def can_switchover(self, pending_bytes: int) -> bool:
        """Whether what is left fits the downtime limit at the expected bandwidth.

        Never before the first full pass is done; with pages pending, only once a window
        measured after it closed (or with `avail-switchover-bandwidth` set by the operator).
        """
        if not self._first_pass_done or pending_bytes > self.threshold_bytes:
            return False
        measured = self._windows_after_first_pass > 0 or self.avail_switchover_bandwidth_bytes_per_s
        return pending_bytes == 0 or bool(measured)


class DirtyRateMeter:
    """Guest dirty rate in pages per second, from the pages each dirty sync found.

    QEMU (`migration_bitmap_sync`) updates `dirty-pages-rate` at most once a second from the
    pages dirtied in the period since the last update.
    """

    def __init__(self, *, now: float) -> None:
        self._period_start_at = now
        self._period_pages = 0
        self.pages_per_second = 0.0

    def record_sync(self, *, now: float, dirtied_pages: int) -> None:
        """Account one dirty sync that found `dirtied_pages` pages written since the last one."""
        self._period_pages += dirtied_pages
        period_s = now - self._period_start_at
        if period_s >= DIRTY_RATE_PERIOD_S:
            self.pages_per_second = self._period_pages / period_s
            self._period_start_at = now
            self._period_pages = 0


class RateLimiter:
    """QEMU's migration rate limit: a byte budget per 100 ms slot (`max-bandwidth` / 10)."""

    SLOT_S: Final = 0.1

    def __init__(self, *, now: float) -> None:
        self._slot_start_at = now
        self._slot_bytes = 0

    def allowance_bytes(self, *, now: float, limit_bytes_per_s: int) -> int | None:
        """Bytes that may still be queued in the current slot; None when unlimited."""
        if limit_bytes_per_s <= 0:
            self._slot_start_at = now
            self._slot_bytes = 0
            return None
        budget = max(1, round(limit_bytes_per_s * self.SLOT_S))
        self._roll(now, budget)
        return max(0, budget - self._slot_bytes)

    def consume(self, nbytes: int) -> None:
        """Account bytes queued in the current slot."""
        self._slot_bytes += nbytes

    def slot_ends_at(self) -> float:
        """When the current slot ends (sleep until then once the allowance is spent)."""
        return self._slot_start_at + self.SLOT_S

    def _roll(self, now: float, budget: int) -> None:
        if now < self.slot_ends_at():
            return
        # Same comparison as slot_ends_at(), so sleeping until then always opens a new slot
        # (dividing by SLOT_S could round just below one slot and never roll).
        elapsed_slots = max(1, int((now - self._slot_start_at) / self.SLOT_S))
        # A batch may overshoot its slot's budget (a frame is never split); the excess is paid
        # from the following slots, so the rate holds over any second even for tiny limits.
        self._slot_bytes = max(0, self._slot_bytes - budget * elapsed_slots)
        self._slot_start_at += elapsed_slots * self.SLOT_S
