"""QEMU's savevm framework: the registry, iterable handlers, records and the save/load steps."""

from __future__ import annotations

from vmsim.savevm.framework import (
    load_check_complete,
    load_cleanup,
    load_section_full,
    load_section_part,
    load_section_start,
    state_cleanup,
    state_complete,
    state_complete_devices,
    state_complete_postcopy,
    state_iterate,
    state_pending_estimate,
    state_pending_exact,
    state_setup,
)
from vmsim.savevm.handlers import MAX_RUN_PAGES, PageBatch, PageKind, SaveVMHandlers
from vmsim.savevm.ram_handler import RAM_IDSTR, RAM_VERSION_ID, RamSaveHandler, RamStats
from vmsim.savevm.ram_loader import PageRuns, RamLoader, Runs, row_runs
from vmsim.savevm.records import SectionFull, SectionPart, SectionStart
from vmsim.savevm.registry import INSTANCE_ID_ANY, SaveStateEntry, SaveVMRegistry

__all__ = [
    "INSTANCE_ID_ANY",
    "MAX_RUN_PAGES",
    "RAM_IDSTR",
    "RAM_VERSION_ID",
    "PageBatch",
    "PageKind",
    "PageRuns",
    "RamLoader",
    "RamSaveHandler",
    "RamStats",
    "Runs",
    "SaveStateEntry",
    "SaveVMHandlers",
    "SaveVMRegistry",
    "SectionFull",
    "SectionPart",
    "SectionStart",
    "load_check_complete",
    "load_cleanup",
    "load_section_full",
    "load_section_part",
    "load_section_start",
    "row_runs",
    "state_cleanup",
    "state_complete",
    "state_complete_devices",
    "state_complete_postcopy",
    "state_iterate",
    "state_pending_estimate",
    "state_pending_exact",
    "state_setup",
]
