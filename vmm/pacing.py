"""How fast the simulated vCPUs may run: real-time pacing, auto-converge and dirty limits.

A pure object (time is passed in) that `vmm.vm.VirtualMachine` asks how many ticks are due.
Ticks are due at the machine's `tick_hz` of real time, slowed down by:

- **auto-converge** (QEMU `cpu_throttle_set`): QEMU's vCPU threads sleep `pct` % of each 10 ms
  timeslice, so the guest runs `100 - pct` % of the time; here the tick rate is scaled by the
  same share (continuously rather than in 10 ms slices: only the number of ticks matters to the
  machine's state);
- **dirty limits** (QEMU `set-vcpu-dirty-limit`, and the migration's `dirty-limit`
  capability): each vCPU's page writes are capped at a rate in MiB/s. QEMU sleeps a vCPU each
  time its dirty ring fills, so a writer runs only as fast as its quota allows and a vCPU that
  writes nothing is not slowed. The simulated vCPUs advance in lockstep (a tick is a tick for
  all of them), so the guest runs at the pace of its most limited writer: ticks/s =
  limit_pages_per_s x tick_hz / writes_per_s.

The limits only change *when* ticks run, never what a tick does: the state after N ticks is
still a pure function of the configuration and N, so the replay oracle keeps working.
`throttled_ticks` counts the work the guest lost to throttling: ticks an unthrottled guest
would have executed in the same running time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

PAGE_BYTES: Final = 4096
MIB: Final = 1 << 20
MAX_LAG_S: Final = 0.1  # beyond this much backlog the vCPU drops time (steal) instead of racing
DIRTY_RING_ENTRIES: Final = 4096  # the simulated KVM dirty ring (QEMU's dirty-ring-size)


def pages_per_s(limit_mib_per_s: int) -> float:
    """A dirty limit in MiB/s as 4 KiB pages per second (QEMU counts MB as MiB here)."""
    return limit_mib_per_s * MIB / PAGE_BYTES


@dataclass(frozen=True, slots=True)
class VcpuLimit:
    """One vCPU's dirty-limit figures (QEMU `DirtyLimitInfo`), rates in MB/s."""

    cpu_index: int
    limit_rate: int
    current_rate: int


class Pacer:
    """The tick schedule of one machine.

    Args:
        tick_hz: the machine's configured ticks per second.
        writes_per_s: each vCPU's configured page writes per second (unthrottled).
        now: the current time.
        ticks: the machine's tick count now.
    """

    def __init__(
        self, *, tick_hz: int, writes_per_s: Sequence[int], now: float, ticks: int
    ) -> None:
        self._tick_hz = tick_hz
        self._writes_per_s = tuple(writes_per_s)
        self.cpu_throttle_percent = 0
        self.migration_limit_mib_per_s: int | None = None  # set by the migration's throttle
        self.vcpu_limits_mib_per_s: dict[int, int] = {}  # set-vcpu-dirty-limit, by cpu index
        self.lost_ticks = 0  # time dropped when the host could not keep up (steal)
        self._throttled_ticks = 0.0
        self._running = False
        self._anchor_at = now
        self._anchor_ticks = float(ticks)
        self._rate_hz = float(tick_hz)

    # ------------------------------------------------------------------ limits

    def set_cpu_throttle(self, percent: int, *, now: float, ticks: int) -> None:
        """Auto-converge: the vCPUs sleep `percent` % of the time (0 lifts it)."""
        self._reanchor(now, ticks)
        self.cpu_throttle_percent = percent
        self._rate_hz = self._effective_hz()

    def set_migration_limit(self, limit_mib_per_s: int | None, *, now: float, ticks: int) -> None:
        """The migration's dirty-limit throttle on every vCPU (None lifts it)."""
        self._reanchor(now, ticks)
        self.migration_limit_mib_per_s = limit_mib_per_s
        self._rate_hz = self._effective_hz()

    def set_vcpu_limit(
        self, cpu_index: int | None, limit_mib_per_s: int | None, *, now: float, ticks: int
    ) -> None:
        """`set-vcpu-dirty-limit` / `cancel-vcpu-dirty-limit` on one vCPU or all (None)."""
        self._reanchor(now, ticks)
        indexes = range(len(self._writes_per_s)) if cpu_index is None else (cpu_index,)
        for index in indexes:
            if limit_mib_per_s is None:
                self.vcpu_limits_mib_per_s.pop(index, None)
            else:
                self.vcpu_limits_mib_per_s[index] = limit_mib_per_s
        self._rate_hz = self._effective_hz()

    def limit_of(self, cpu_index: int) -> int | None:
        """The dirty limit in force on one vCPU (MiB/s), the lower of the two, or None."""
        limits = [self.vcpu_limits_mib_per_s.get(cpu_index), self.migration_limit_mib_per_s]
        present = [limit for limit in limits if limit is not None]
        return min(present, default=None)

    @property
    def dirty_limited(self) -> bool:
        """Whether any vCPU has a dirty limit."""
        return bool(self.vcpu_limits_mib_per_s) or self.migration_limit_mib_per_s is not None

    @property
    def rate_hz(self) -> float:
        """Ticks per second the guest may execute now."""
        return self._rate_hz

    # ------------------------------------------------------------------ schedule

    def started(self, *, now: float, ticks: int) -> None:
        """The machine (re)starts running: the schedule starts from here."""
        self._running = True
        self._anchor_at = now
        self._anchor_ticks = float(ticks)

    def stopped(self, *, now: float, ticks: int) -> None:
        """The machine stops: throttling costs nothing while it does not run."""
        self._reanchor(now, ticks)
        self._running = False

    def due_ticks(self, *, now: float, ticks: int) -> int:
        """Ticks that may run now (the guest ran `ticks` so far)."""
        target = self._anchor_ticks + (now - self._anchor_at) * self._rate_hz
        due = int(target) - ticks
        max_lag_ticks = max(1, int(MAX_LAG_S * self._rate_hz))
        if due > max_lag_ticks:
            # The host was busy for too long (or the process was stopped): keep real-time pacing
            # from here on rather than racing through the backlog; report the lost time.
            self.lost_ticks += due - max_lag_ticks
            self._reanchor(now, ticks)
            self._anchor_ticks = float(ticks + max_lag_ticks)
            due = max_lag_ticks
        return due

    def wait_s(self, *, now: float, ticks: int) -> float:
        """How long until the next tick is due (0 when one is due now)."""
        if self._rate_hz <= 0:
            return float("inf")
        target = self._anchor_ticks + (now - self._anchor_at) * self._rate_hz
        return max(0.0, (ticks + 1 - target) / self._rate_hz)

    def throttled_ticks(self, *, now: float) -> int:
        """Ticks the guest lost to throttling so far: an unthrottled guest would have run them."""
        return int(self._throttled_ticks + self._throttled_since_anchor(now))

    # ------------------------------------------------------------------ reporting

    def vcpu_limits(self, ticks_per_s: float) -> list[VcpuLimit]:
        """`query-vcpu-dirty-limit`: the limited vCPUs, their limit and current rate (MB/s)."""
        rows = []
        for index, writes_per_s in enumerate(self._writes_per_s):
            limit = self.limit_of(index)
            if limit is None:
                continue
            current = ticks_per_s * writes_per_s / self._tick_hz * PAGE_BYTES / MIB
            rows.append(VcpuLimit(cpu_index=index, limit_rate=limit, current_rate=round(current)))
        return rows

    def ring_full_time_us(self) -> int:
        """QEMU `dirty-limit-ring-full-time`: how long a vCPU takes to fill its dirty ring now."""
        rate = max(self._writer_pages_per_s(self._rate_hz), 1.0)
        return round(DIRTY_RING_ENTRIES / rate * 1e6)

    def throttle_time_per_round_us(self) -> int:
        """QEMU `dirty-limit-throttle-time-per-round`: the sleep added to each ring-full round."""
        if not self.dirty_limited:
            return 0
        free_rate = self._writer_pages_per_s(self._tick_hz * self._cpu_share())
        if free_rate <= 0:
            return 0
        free_us = DIRTY_RING_ENTRIES / free_rate * 1e6
        return max(0, self.ring_full_time_us() - round(free_us))

    # ------------------------------------------------------------------ internals

    def _cpu_share(self) -> float:
        return (100 - self.cpu_throttle_percent) / 100

    def _effective_hz(self) -> float:
        hz = self._tick_hz * self._cpu_share()
        for index, writes_per_s in enumerate(self._writes_per_s):
            limit = self.limit_of(index)
            if limit is None or writes_per_s == 0:
                continue
            hz = min(hz, pages_per_s(limit) * self._tick_hz / writes_per_s)
        return hz

    def _writer_pages_per_s(self, hz: float) -> float:
        busiest = max(self._writes_per_s, default=0)
        return hz * busiest / self._tick_hz

    def _reanchor(self, now: float, ticks: int) -> None:
        """Start a new stretch at the current schedule position (`ticks` if behind it)."""
        target = self._anchor_ticks + (now - self._anchor_at) * self._rate_hz
        self._throttled_ticks += self._throttled_since_anchor(now)
        self._anchor_at = now
        self._anchor_ticks = max(float(ticks), min(target, ticks + MAX_LAG_S * self._rate_hz))

    def _throttled_since_anchor(self, now: float) -> float:
        if not self._running:
            return 0.0
        return max(0.0, (now - self._anchor_at) * (self._tick_hz - self._rate_hz))
