"""Helpers for tests: an in-memory migration through the savevm framework only.

No wire format is involved: records go from the source's framework calls straight to the
destination's. The daemons do the same with frames in between, so this is the reference
behaviour a real migration must reproduce (same digest as a replay).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from vmsim.machine import Machine
from vmsim.runstate import RunState
from vmsim.savevm.framework import (
    load_check_complete,
    load_cleanup,
    load_section_full,
    load_section_part,
    load_section_start,
    state_cleanup,
    state_complete,
    state_iterate,
    state_pending_exact,
    state_setup,
)
from vmsim.savevm.records import SectionFull, SectionPart, SectionStart

if TYPE_CHECKING:
    from vmsim.savevm.registry import SaveVMRegistry

__all__ = ["load_record", "migrate_in_memory"]

DEFAULT_BATCH_PAGES: Final = 256


def load_record(registry: SaveVMRegistry, record: SectionStart | SectionPart | SectionFull) -> None:
    """Load any framework record into a destination registry."""
    if isinstance(record, SectionStart):
        load_section_start(registry, record)
    elif isinstance(record, SectionPart):
        load_section_part(registry, record)
    else:
        load_section_full(registry, record)


def migrate_in_memory(
    source: Machine,
    *,
    max_pages: int = DEFAULT_BATCH_PAGES,
    precopy_passes: int = 2,
    ticks_per_batch: int = 0,
) -> Machine:
    """Migrate source into a new `Machine.for_incoming` and return it, QEMU's precopy way.

    Setup, then `precopy_passes` passes (each sends what the bitmap holds, running the source
    ticks_per_batch ticks after every batch if it is running, then syncs), then
    stop_for_migration, completion, the destination's completeness check and cleanup. The
    source ends in POSTMIGRATE; the destination is loaded and left in INMIGRATE for the caller
    to start (or not) from `migrated_runstate()`.
    """
    destination = Machine.for_incoming(source.config)
    received: set[tuple[str, int]] = set()
    for setup_record in state_setup(source.savevm):
        load_record(destination.savevm, setup_record)
        if isinstance(setup_record, SectionFull):
            received.add((setup_record.idstr, setup_record.instance_id))
    for _ in range(precopy_passes):
        while (part := state_iterate(source.savevm, max_pages)) is not None:
            load_record(destination.savevm, part)
            if ticks_per_batch and source.is_running:
                source.run(ticks_per_batch)
        state_pending_exact(source.savevm)
    source.stop_for_migration()
    for record in state_complete(source.savevm, max_pages):
        load_record(destination.savevm, record)
        if isinstance(record, SectionFull):
            received.add((record.idstr, record.instance_id))
    state_cleanup(source.savevm)
    load_check_complete(destination.savevm, received)
    load_cleanup(destination.savevm)
    source.vm_stop(RunState.POSTMIGRATE)
    return destination
