"""The savevm framework: QEMU's qemu_savevm_state_* and qemu_loadvm_* over a registry.

Save::

    state_setup -> [START per iterable entry, FULL per (needed) early_setup VMSD]
    while running: state_iterate -> PART, with state_pending_estimate/exact in between
    (stop the VM)
    state_complete -> END parts until drained, then FULL per (needed) device VMSD
    state_cleanup

Load mirrors it record by record: load_section_start, load_section_part, load_section_full,
then load_check_complete at the end of the stream and load_cleanup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmsim.errors import (
    MigrationBlockedError,
    MissingSectionError,
    NotAllowed,
    SaveHookError,
    SaveVMError,
    UnsupportedVersionError,
    VMStateError,
)
from vmsim.savevm.handlers import PageBatch
from vmsim.savevm.records import SectionFull, SectionPart, SectionStart

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator

    from vmsim.savevm.registry import SaveStateEntry, SaveVMRegistry

__all__ = [
    "load_check_complete",
    "load_cleanup",
    "load_section_full",
    "load_section_part",
    "load_section_start",
    "state_cleanup",
    "state_complete",
    "state_complete_devices",
    "state_complete_postcopy",
    "state_iterate",
    "state_pending_estimate",
    "state_pending_exact",
    "state_setup",
]


def state_setup(registry: SaveVMRegistry) -> list[SectionStart | SectionFull]:
    """Start a save: a START per iterable entry and a FULL per needed early_setup VMSD, in order.

    An early_setup VMSD whose `needed` returns false sends nothing, as at completion.

    Raises:
        MigrationBlockedError: an unmigratable device is registered.
        SaveHookError: an early_setup device's pre_save or post_save failed (QEMU's
            qemu_savevm_state_setup stops there). Entries before it are set up: end the save
            with state_cleanup, as after any failed save.
    """
    _check_blockers(registry)
    records: list[SectionStart | SectionFull] = []
    for entry in registry.entries:
        if entry.handlers is not None:
            setup = entry.handlers.save_setup()
            records.append(
                SectionStart(
                    section_id=entry.section_id,
                    idstr=entry.idstr,
                    instance_id=entry.instance_id,
                    version_id=entry.version_id,
                    setup=setup,
                )
            )
        elif entry.vmsd is not None and entry.vmsd.early_setup and _section_needed(entry):
            records.append(_full_section(entry))
    return records


def state_pending_estimate(registry: SaveVMRegistry) -> int:
    """Bytes the iterable entries still have to send, without a dirty sync (cheap)."""
    return sum(e.handlers.state_pending_estimate() for e in _iterables(registry))


def state_pending_exact(registry: SaveVMRegistry) -> int:
    """Bytes the iterable entries still have to send, after a dirty sync."""
    return sum(e.handlers.state_pending_exact() for e in _iterables(registry))


def state_iterate(registry: SaveVMRegistry, max_pages: int) -> SectionPart | None:
    """Return the next PART of the first iterable entry that has pages to send, or None."""
    for entry in _iterables(registry):
        batch = entry.handlers.save_live_iterate(max_pages)
        if batch is not None:
            return SectionPart(section_id=entry.section_id, batch=batch, end=False)
    return None


def state_complete(registry: SaveVMRegistry, max_pages: int) -> Iterator[SectionPart | SectionFull]:
    """Complete a save with the VM stopped (qemu_savevm_state_complete_precopy).

    Yields, lazily: END parts of each iterable entry until it is drained (at least one per
    entry, with an empty batch if nothing was left), then a FULL section for every device
    VMSD that is not early_setup and whose `needed` holds, in entry order.

    Raises:
        NotAllowed: the VM is running (checked when called, not when first iterated).
        SaveHookError: (when iterated) a device's pre_save or post_save failed; end the save
            with state_cleanup, as after any failed save.
    """
    if registry.runstate is not None and registry.runstate.is_running:
        msg = "state_complete needs the VM stopped; it is running"
        raise NotAllowed(msg)
    _check_blockers(registry)
    return _complete(registry, max_pages)


def _complete(registry: SaveVMRegistry, max_pages: int) -> Iterator[SectionPart | SectionFull]:
    yield from _complete_iterables(registry, max_pages)
    yield from _complete_devices(registry)


def state_complete_devices(registry: SaveVMRegistry) -> Iterator[SectionFull]:
    """Postcopy's device state, with the VM stopped (QEMU's ..._complete_precopy_non_iterable).

    Yields, lazily, the FULL sections `state_complete` ends with; the iterable entries go on
    sending (`state_complete_postcopy` ends them).

    Raises:
        NotAllowed: the VM is running.
        SaveHookError: (when iterated) a device's pre_save or post_save failed.
    """
    if registry.runstate is not None and registry.runstate.is_running:
        msg = "state_complete_devices needs the VM stopped; it is running"
        raise NotAllowed(msg)
    _check_blockers(registry)
    return _complete_devices(registry)


def state_complete_postcopy(registry: SaveVMRegistry, max_pages: int) -> Iterator[SectionPart]:
    """End a postcopy save (QEMU's qemu_savevm_state_complete_postcopy): END parts only."""
    return _complete_iterables(registry, max_pages)


def _complete_iterables(registry: SaveVMRegistry, max_pages: int) -> Iterator[SectionPart]:
    for entry in _iterables(registry):
        sent = False
        while (batch := entry.handlers.save_complete(max_pages)) is not None:
            sent = True
            yield SectionPart(section_id=entry.section_id, batch=batch, end=True)
        if not sent:
            yield SectionPart(section_id=entry.section_id, batch=PageBatch.empty(), end=True)


def _complete_devices(registry: SaveVMRegistry) -> Iterator[SectionFull]:
    for device in registry.entries:
        vmsd = device.vmsd
        if vmsd is None or vmsd.early_setup or not _section_needed(device):
            continue
        yield _full_section(device)


def state_cleanup(registry: SaveVMRegistry) -> None:
    """End a save, successful or not (save_cleanup of every iterable entry)."""
    for entry in _iterables(registry):
        entry.handlers.save_cleanup()


def load_section_start(registry: SaveVMRegistry, record: SectionStart) -> None:
    """Load a START section: find the entry, check the version, run its load_setup.

    Raises:
        UnknownSectionError: no such (idstr, instance_id).
        UnsupportedVersionError: the section is newer than the local entry.
        SaveVMError: the entry is not iterable.
    """
    entry = _find_checked(registry, record.idstr, record.instance_id, record.version_id)
    if entry.handlers is None:
        raise SaveVMError(f"section '{entry.idstr}' is not iterable; a START is not allowed")
    registry.bind_load_section(record.section_id, entry)
    entry.handlers.load_setup(record.setup)


def load_section_part(registry: SaveVMRegistry, record: SectionPart) -> None:
    """Load a PART or END section into the entry its START announced.

    Raises:
        UnknownSectionError: no START announced the section id.
    """
    entry = registry.load_section(record.section_id)
    assert entry.handlers is not None  # noqa: S101 - only iterable entries are bound
    entry.handlers.load_state(record.batch)


def load_section_full(registry: SaveVMRegistry, record: SectionFull) -> None:
    """Load a FULL section into its device through the VMSD.

    Raises:
        UnknownSectionError: no such (idstr, instance_id).
        UnsupportedVersionError: the section is newer than the local entry.
        MigrationBlockedError: the device is unmigratable.
        VMStateError: the state does not load (a LoadHookError if a pre_load or post_load
            hook failed); the message carries QEMU's prefix "error while loading state for
            instance 0x.. of device '..'".
    """
    entry = _find_checked(registry, record.idstr, record.instance_id, record.version_id)
    vmsd = entry.vmsd
    if vmsd is None:
        raise SaveVMError(f"section '{entry.idstr}' is iterable; a FULL is not allowed")
    if vmsd.unmigratable:
        raise MigrationBlockedError(f"State blocked by non-migratable device '{entry.idstr}'")
    try:
        vmsd.load(entry.opaque, record.state, record.version_id)
    except VMStateError as error:
        detail = error.detail if error.device == vmsd.name else str(error)
        prefix = f"error while loading state for instance {entry.instance_id:#x}"
        raise error.reworded(f"{prefix} of device '{entry.idstr}': {detail}") from error


def load_check_complete(registry: SaveVMRegistry, received: Collection[tuple[str, int]]) -> None:
    """At the end of a stream: check that the state of every device arrived.

    QEMU does not detect a missing section (the entry keeps its reset state); livemig refuses
    to run such a VM, except for a device whose local VMSD has a `needed` callback: its source
    sends nothing when needed() is false there (vmstate_section_needed), and the device then
    rightly keeps its reset state. Only VMSD entries are checked: an iterable entry (RAM) has
    its own START/END sections and is not device state.

    Args:
        registry: the destination's registry.
        received: (idstr, instance_id) of every FULL section loaded; other pairs are ignored.

    Raises:
        MissingSectionError: names every device that must have arrived and did not, in
            registry order.
    """
    missing = tuple(
        (entry.idstr, entry.instance_id)
        for entry in registry.entries
        if entry.vmsd is not None
        and entry.vmsd.needed is None
        and (entry.idstr, entry.instance_id) not in received
    )
    if missing:
        raise MissingSectionError(missing)


def load_cleanup(registry: SaveVMRegistry) -> None:
    """End a load (load_cleanup of every iterable entry)."""
    for entry in _iterables(registry):
        entry.handlers.load_cleanup()
    registry.clear_load_sections()


class _Iterable:
    """An entry known to have handlers (typed view for the loops above)."""

    __slots__ = ("handlers", "section_id")

    def __init__(self, entry: SaveStateEntry) -> None:
        assert entry.handlers is not None  # noqa: S101 - filtered by _iterables
        self.handlers = entry.handlers
        self.section_id = entry.section_id


def _iterables(registry: SaveVMRegistry) -> list[_Iterable]:
    return [_Iterable(e) for e in registry.entries if e.handlers is not None]


def _section_needed(entry: SaveStateEntry) -> bool:
    """QEMU's vmstate_section_needed: a top-level VMSD without `needed` is always sent."""
    vmsd = entry.vmsd
    return vmsd is not None and (vmsd.needed is None or vmsd.needed(entry.opaque))


def _full_section(entry: SaveStateEntry) -> SectionFull:
    vmsd = entry.vmsd
    assert vmsd is not None  # noqa: S101 - callers pass VMSD entries
    try:
        state = vmsd.save(entry.opaque, entry.version_id)
    except SaveHookError as error:
        detail = error.detail if error.device == vmsd.name else str(error)
        prefix = f"error while saving state for instance {entry.instance_id:#x}"
        raise error.reworded(f"{prefix} of device '{entry.idstr}': {detail}") from error
    return SectionFull(
        section_id=entry.section_id,
        idstr=entry.idstr,
        instance_id=entry.instance_id,
        version_id=entry.version_id,
        state=state,
    )


def _find_checked(
    registry: SaveVMRegistry, idstr: str, instance_id: int, version_id: int
) -> SaveStateEntry:
    entry = registry.find(idstr, instance_id)
    if version_id > entry.version_id:
        raise UnsupportedVersionError(
            f"unsupported version {version_id} for '{idstr}' v{entry.version_id}"
        )
    return entry


def _check_blockers(registry: SaveVMRegistry) -> None:
    blockers = registry.blockers()
    if blockers:
        raise MigrationBlockedError(f"State blocked by non-migratable device '{blockers[0]}'")
