"""Where things are in guest RAM, derived from the configuration alone.

pages [0, working_set_pages)       the workload's working set, split into one contiguous
                                   partition per vCPU (so vCPUs never write the same page)
pages [.., usable_pages)           untouched by the workload
page  its_table_pfn (the last)     reserved: the ITS writes its tables here on stop
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from vmsim.config import PAGE_SIZE, WorkloadKind

if TYPE_CHECKING:
    from vmsim.config import MachineConfig

__all__ = ["ITS_TABLE_PAGES", "MachineLayout", "Partition"]

ITS_TABLE_PAGES: Final = 1
_PAGES_PER_MIB: Final = 1024 * 1024 // PAGE_SIZE


@dataclass(frozen=True, kw_only=True, slots=True)
class Partition:
    """One vCPU's share of the working set and of the dirty rate.

    Attributes:
        first_pfn: first page of the partition.
        n_pages: pages in the partition (>= 1).
        hot_pages: pages at its start that form its hot set (hotset workload).
        writes_per_s: this vCPU's page writes per second.
    """

    first_pfn: int
    n_pages: int
    hot_pages: int
    writes_per_s: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MachineLayout:
    """The RAM map and per-vCPU partitions of a configuration."""

    n_pages: int
    usable_pages: int
    its_table_pfn: int
    working_set_pages: int
    partitions: tuple[Partition, ...]

    @classmethod
    def of(cls, config: MachineConfig) -> MachineLayout:
        """Compute the layout of a configuration."""
        n_pages = config.n_pages
        usable = n_pages - ITS_TABLE_PAGES
        wanted = (
            usable if config.working_set_mib is None else config.working_set_mib * _PAGES_PER_MIB
        )
        working_set = min(wanted, usable)
        rate = 0 if config.workload is WorkloadKind.IDLE else config.dirty_rate
        partitions = []
        for index in range(config.vcpus):
            first = working_set * index // config.vcpus
            size = working_set * (index + 1) // config.vcpus - first
            hot_total = min(config.hot_mib * _PAGES_PER_MIB, working_set)
            partitions.append(
                Partition(
                    first_pfn=first,
                    n_pages=size,
                    hot_pages=max(1, min(size, hot_total // config.vcpus)),
                    # The first (rate mod vcpus) vCPUs take one write per second more.
                    writes_per_s=rate // config.vcpus + (1 if index < rate % config.vcpus else 0),
                )
            )
        return cls(
            n_pages=n_pages,
            usable_pages=usable,
            its_table_pfn=n_pages - ITS_TABLE_PAGES,
            working_set_pages=working_set,
            partitions=tuple(partitions),
        )

    @property
    def device_pfns(self) -> range:
        """Pages a device's state reads at load (the ITS tables).

        A postcopy source sends them before the device state.
        """
        return range(self.its_table_pfn, self.its_table_pfn + ITS_TABLE_PAGES)

    @property
    def its_table_address(self) -> int:
        """Guest physical address of the ITS table region."""
        return self.its_table_pfn * PAGE_SIZE
