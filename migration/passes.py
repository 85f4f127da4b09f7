"""The per-pass samples of a source migration: one row per dirty sync, for its record and chart.

The precopy loop appends a `PassSample` at every dirty sync (QEMU's `dirty-sync-count`): what
remained after it, what the guest wrote since the previous one, what had been sent, the
bandwidth, the throttle in force during the pass that ended. These are exact figures taken where
the sync happens, not samples of `query-migrate` (whose rates are windowed and may miss a short
pass).

A `PassLog` is bounded: past `capacity` rows it drops every second row and from then on keeps one
sync in two (then four, ...), so a migration that runs for hours still spans its whole history
in a fixed amount of memory; `stride` says how many syncs each kept row stands for. The newest
sync is always shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

PASS_LOG_CAPACITY: Final = 2048


@dataclass(frozen=True, kw_only=True, slots=True)
class PassSample:
    """One dirty sync (pass) of a migration.

    Attributes:
        sync: the dirty-sync count it made (1 is the setup sync, which finds all of RAM).
        at_ms: milliseconds after `migrate`.
        remaining_bytes: bytes still to send right after the sync.
        dirtied_pages: pages the guest wrote since the previous sync (all of RAM for the setup
            sync, which marks every page).
        transferred_bytes: bytes sent so far.
        dirty_pages_rate: the guest's dirty rate as measured so far (pages per second).
        mbps: bandwidth of the last closed window (megabits per second).
        cpu_throttle_percent: auto-converge's throttle during the pass that ended.
        dirty_limit_mb_per_s: the dirty-limit cap during that pass (None: no cap).
    """

    sync: int
    at_ms: int
    remaining_bytes: int
    dirtied_pages: int
    transferred_bytes: int
    dirty_pages_rate: float
    mbps: float
    cpu_throttle_percent: int
    dirty_limit_mb_per_s: int | None

    def to_json(self) -> dict[str, object]:
        """As in a migration record (QEMU-style dashed names)."""
        return {
            "pass": self.sync,
            "at-ms": self.at_ms,
            "remaining": self.remaining_bytes,
            "dirtied-pages": self.dirtied_pages,
            "transferred": self.transferred_bytes,
            "dirty-pages-rate": round(self.dirty_pages_rate),
            "mbps": round(self.mbps, 3),
            "cpu-throttle-percentage": self.cpu_throttle_percent,
            "dirty-limit": self.dirty_limit_mb_per_s,
        }


@dataclass(slots=True)
class PassLog:
    """The passes of one migration, bounded to `capacity` rows (thinned when full)."""

    capacity: int = PASS_LOG_CAPACITY
    rows: list[PassSample] = field(default_factory=list)
    stride: int = 1
    last: PassSample | None = None
    _seen: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 2:  # noqa: PLR2004 - thinning halves the log
            msg = f"a pass log needs room for at least 2 rows, not {self.capacity}"
            raise ValueError(msg)

    def append(self, sample: PassSample) -> None:
        """Keep `sample` if it falls on the stride (the first sync always does)."""
        self.last = sample
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        if len(self.rows) >= self.capacity:
            del self.rows[1::2]
            self.stride *= 2
            if (self._seen - 1) % self.stride:
                return
        self.rows.append(sample)

    def to_json(self) -> list[dict[str, object]]:
        """Every kept row, in order, and always the newest sync."""
        rows = self.rows
        if self.last is not None and (not rows or rows[-1] is not self.last):
            rows = [*rows, self.last]
        return [row.to_json() for row in rows]
