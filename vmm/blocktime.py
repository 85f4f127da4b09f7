"""Postcopy blocktime: how long the destination's vCPUs waited for pages that had not arrived.

QEMU's `postcopy-blocktime` is the total time during which every vCPU was blocked, and
`postcopy-vcpu-blocktime` the time each vCPU was. livemig's vCPUs run as one slice, so they block
together: each vCPU's figure is the total. The distribution of single blocks (count, p50, p99,
max) is livemig's own (`x-postcopy-blocks`).
"""

from __future__ import annotations

from typing import Final

MAX_SAMPLES: Final = 65536


class Blocktime:
    """Blocks of the vCPUs on missing pages, measured on the VM's clock."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self.blocks = 0
        self._samples: list[float] = []
        self._since: float | None = None

    @property
    def blocked(self) -> bool:
        """Whether a block is in progress."""
        return self._since is not None

    def block(self, now: float) -> None:
        """The vCPUs wait for pages from `now` on (a no-op while they already wait)."""
        if self._since is None:
            self._since = now

    def unblock(self, now: float) -> None:
        """The pages arrived at `now`: the block ends."""
        if self._since is None:
            return
        spent = max(0.0, now - self._since)
        self._since = None
        self.total_s += spent
        self.blocks += 1
        if len(self._samples) < MAX_SAMPLES:
            self._samples.append(spent)

    def to_qmp(self, vcpus: int) -> dict[str, object]:
        """QEMU's blocktime members (ms), with livemig's distribution of blocks."""
        total_ms = round(self.total_s * 1000)
        ordered = sorted(self._samples)

        def quantile_ms(q: float) -> float:
            if not ordered:
                return 0.0
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

        return {
            "postcopy-blocktime": total_ms,
            "postcopy-vcpu-blocktime": [total_ms] * vcpus,
            "x-postcopy-blocks": {
                "count": self.blocks,
                "p50-ms": quantile_ms(0.5),
                "p99-ms": quantile_ms(0.99),
                "max-ms": round(ordered[-1] * 1000, 3) if ordered else 0.0,
            },
        }
