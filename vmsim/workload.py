"""The vCPUs' page-writing workloads and QEMU's A-B RAM check.

Each workload writes only inside its vCPU's partition of the working set, so the writes of
different vCPUs commute and a span of ticks can be applied vCPU by vCPU in one vectorised step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

import numpy as np

from vmsim.config import PAGE_SIZE, WorkloadKind
from vmsim.prng import draws, mix64_array, stream_key
from vmsim.ram import WORDS_PER_PAGE

if TYPE_CHECKING:
    from vmsim.config import MachineConfig
    from vmsim.devices.cpu import VCpu
    from vmsim.layout import Partition
    from vmsim.ram import GuestRam

__all__ = ["AB_SWEEPS_PER_B", "Workload", "check_ab_ranges", "make_workload"]

AB_SWEEPS_PER_B: Final = 64
"""QEMU's a-b-bootblock writes 'B' after every 64 complete sweeps."""

AB_POSITION_REG: Final = 5
AB_SWEEPS_REG: Final = 6
AB_B_COUNT_REG: Final = 7
_LANE_ADDRESS: Final = 0x41444452
_LANE_VALUE: Final = 0x56414C55
_LANE_HOT: Final = 0x484F5420
_MAX_BAD_REPORTS: Final = 10


class Workload(Protocol):
    """What one vCPU writes."""

    def write(self, cpu: VCpu, n_writes: int, key: int) -> None:
        """Perform the vCPU's next n_writes page writes (its counters advance elsewhere).

        Args:
            cpu: the vCPU (its prng_counter is the first counter the writes use).
            n_writes: how many writes.
            key: the hash of the vCPU's register file, mixed into written values.
        """
        ...

    def writes_until_b(self, cpu: VCpu) -> int | None:
        """Writes until the vCPU next has a 'B' to print, or None if it never prints one."""
        ...


class IdleWorkload:
    """Writes nothing."""

    def write(self, cpu: VCpu, n_writes: int, key: int) -> None:
        """Write nothing."""

    def writes_until_b(self, cpu: VCpu) -> int | None:  # noqa: ARG002 - protocol signature
        """Never prints."""
        return None


class RandomWorkload:
    """One u64 store per write at a pseudo-random word of the partition.

    With a hot set (the hotset workload) a share of the writes goes to the partition's start.
    """

    def __init__(
        self,
        ram: GuestRam,
        partition: Partition,
        *,
        hot_percent: int | None,
        keys: tuple[int, int, int],
    ) -> None:
        """Bind the workload to a partition.

        Args:
            ram: guest RAM.
            partition: the vCPU's partition.
            hot_percent: share of writes to the hot set, or None for uniform writes.
            keys: the vCPU's stream keys for addresses, values and the hot choice.
        """
        self._ram = ram
        self._first_word = partition.first_pfn * WORDS_PER_PAGE
        self._n_words = np.uint64(partition.n_pages * WORDS_PER_PAGE)
        self._hot_words = np.uint64(partition.hot_pages * WORDS_PER_PAGE)
        self._hot_percent = None if hot_percent is None else np.uint64(hot_percent)
        self._keys = keys

    def write(self, cpu: VCpu, n_writes: int, key: int) -> None:
        """Store n_writes u64 values at pseudo-random words of the partition."""
        address_key, value_key, hot_key = self._keys
        first = cpu.prng_counter
        offsets = draws(address_key, first, n_writes)
        if self._hot_percent is None:
            offsets %= self._n_words
        else:
            to_hot = draws(hot_key, first, n_writes) % np.uint64(100) < self._hot_percent
            offsets = np.where(to_hot, offsets % self._hot_words, offsets % self._n_words)
        offsets += np.uint64(self._first_word)
        # The value depends on the word and the register key only, so two stores to one word
        # within a span store the same value: numpy's scatter order cannot matter, and no
        # sort is needed to find the last store.
        values = mix64_array(offsets ^ np.uint64(key ^ value_key))
        self._ram.write_words(offsets, values)

    def writes_until_b(self, cpu: VCpu) -> int | None:  # noqa: ARG002 - protocol signature
        """Never prints."""
        return None


class AbWorkload:
    """QEMU's A-B guest: increment byte 0 of every page of the partition, in order, forever.

    Registers: x5 = next page (0-based in the partition), x6 = completed sweeps,
    x7 = 'B's printed.
    """

    def __init__(self, ram: GuestRam, partition: Partition) -> None:
        self._ram = ram
        self._first_pfn = partition.first_pfn
        self._n_pages = partition.n_pages

    def boot(self) -> None:
        """Zero byte 0 of every page of the range, as the boot block does."""
        self._ram.set_first_bytes(self._first_pfn, self._n_pages, 0)

    def write(self, cpu: VCpu, n_writes: int, key: int) -> None:  # noqa: ARG002 - no values
        """Increment the next n_writes pages; whole sweeps and the partial one vectorised."""
        pages = self._n_pages
        position = int(cpu.gprs[AB_POSITION_REG])
        sweeps, remainder = divmod(n_writes, pages)
        if sweeps:
            self._ram.add_to_first_bytes(self._first_pfn, pages, sweeps)
        end = position + remainder
        self._ram.add_to_first_bytes(self._first_pfn + position, min(end, pages) - position, 1)
        if end > pages:
            self._ram.add_to_first_bytes(self._first_pfn, end - pages, 1)
        cpu.gprs[AB_POSITION_REG] = (position + n_writes) % pages
        cpu.gprs[AB_SWEEPS_REG] = int(cpu.gprs[AB_SWEEPS_REG]) + (position + n_writes) // pages

    def writes_until_b(self, cpu: VCpu) -> int | None:
        """Writes until the next multiple of 64 sweeps completes (0: a 'B' is due now)."""
        printed = int(cpu.gprs[AB_B_COUNT_REG])
        sweeps = int(cpu.gprs[AB_SWEEPS_REG])
        target_sweeps = AB_SWEEPS_PER_B * (printed + 1)
        if sweeps >= target_sweeps:
            return 0
        return (target_sweeps - sweeps) * self._n_pages - int(cpu.gprs[AB_POSITION_REG])


def make_workload(
    ram: GuestRam, partition: Partition, config: MachineConfig, vcpu_index: int
) -> Workload:
    """Build one vCPU's workload."""
    kind = config.workload
    if kind is WorkloadKind.AB:
        return AbWorkload(ram, partition)
    if kind is WorkloadKind.IDLE:
        return IdleWorkload()
    keys = (
        stream_key(config.seed, vcpu_index, _LANE_ADDRESS),
        stream_key(config.seed, vcpu_index, _LANE_VALUE),
        stream_key(config.seed, vcpu_index, _LANE_HOT),
    )
    hot_percent = config.hot_percent if kind is WorkloadKind.HOTSET else None
    return RandomWorkload(ram, partition, hot_percent=hot_percent, keys=keys)


def check_ab_ranges(ram: GuestRam, partitions: tuple[Partition, ...]) -> list[str]:
    """QEMU's check_guests_ram over each vCPU's sweep range.

    Within a range, byte 0 of every page must equal the first page's, except that at exactly
    one edge the value may drop by one (mod 256) and stay there: where the sweep was stopped.

    Returns:
        [] if every range is consistent, else descriptions of the first 10 inconsistencies.
    """
    problems: list[str] = []
    for partition in partitions:
        problems.extend(_check_ab_range(ram, partition))
        if len(problems) >= _MAX_BAD_REPORTS:
            break
    return problems[:_MAX_BAD_REPORTS]


def _check_ab_range(ram: GuestRam, partition: Partition) -> list[str]:
    start = partition.first_pfn * PAGE_SIZE
    end = (partition.first_pfn + partition.n_pages) * PAGE_SIZE
    values = ram.array[start:end:PAGE_SIZE].astype(np.int64)
    first = int(values[0])
    # The first page that differs by exactly -1 is the edge; QEMU's scan then compares with it.
    edge_candidates = np.flatnonzero((values != first) & ((values + 1) % 256 == first))
    edge = int(edge_candidates[0]) if len(edge_candidates) else len(values)
    before = np.flatnonzero(values[:edge] != first)
    after = (
        np.flatnonzero(values[edge:] != values[edge]) + edge if edge < len(values) else before[:0]
    )
    bad = np.concatenate((before, after))[:_MAX_BAD_REPORTS]
    hit_edge = edge < len(values)
    return [
        f"Memory content inconsistency at {start + int(i) * PAGE_SIZE:x}"
        f" first_byte = {first:x}"
        f" last_byte = {first if int(i) < edge else int(values[edge]):x}"
        f" current = {int(values[i]):x} hit_edge = {int(hit_edge and int(i) > edge):x}"
        for i in bad
    ]
