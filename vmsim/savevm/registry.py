"""The registry of SaveStateEntry: what is saved, in which order, under which section id.

QEMU's savevm_state.handlers list with vmstate_register and register_savevm_live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from vmsim.config import PAGE_SIZE
from vmsim.errors import DuplicateEntryError, SaveVMError, UnknownSectionError
from vmsim.vmstate.description import MigrationPriority, VMStateDescription

if TYPE_CHECKING:
    from vmsim.runstate import RunStateMachine
    from vmsim.savevm.handlers import SaveVMHandlers

__all__ = ["INSTANCE_ID_ANY", "SaveStateEntry", "SaveVMRegistry"]

INSTANCE_ID_ANY: Final = -1
"""VMSTATE_INSTANCE_ID_ANY: take the highest instance id of the idstr plus one."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SaveStateEntry:
    """One registered piece of state: a VMSD with its device, or iterable handlers.

    Attributes:
        idstr: the section name (e.g. "ram", "cpu").
        instance_id: distinguishes entries of one idstr (e.g. one per vCPU).
        section_id: this registry's id for the entry, in registration order.
        version_id: the version this side saves and the newest it loads.
        priority: the effective priority (UNINITIALIZED is mapped to DEFAULT).
        vmsd: the state description, for a device entry.
        handlers: the hooks, for an iterable entry.
        opaque: the device object the VMSD reads and writes.
    """

    idstr: str
    instance_id: int
    section_id: int
    version_id: int
    priority: MigrationPriority
    vmsd: VMStateDescription[Any] | None
    handlers: SaveVMHandlers | None
    opaque: object

    @property
    def is_iterable(self) -> bool:
        """Whether the entry is saved live by handlers (like RAM) rather than by a VMSD."""
        return self.handlers is not None


class SaveVMRegistry:
    """Entries ordered by priority (higher first), then registration order."""

    __slots__ = ("_entries", "_load_sections", "_next_section_id", "runstate")

    def __init__(self, *, runstate: RunStateMachine | None = None) -> None:
        """Create an empty registry.

        Args:
            runstate: the machine's run state; when given, the framework refuses to complete
                a save while the VM is running.
        """
        self._entries: list[SaveStateEntry] = []
        self._next_section_id = 0
        self._load_sections: dict[int, SaveStateEntry] = {}
        self.runstate = runstate

    @property
    def entries(self) -> tuple[SaveStateEntry, ...]:
        """All entries in save (and load) order."""
        return tuple(self._entries)

    def register(
        self,
        idstr: str,
        instance_id: int,
        *,
        vmsd: VMStateDescription[Any] | None = None,
        handlers: SaveVMHandlers | None = None,
        opaque: object = None,
        version_id: int | None = None,
        priority: MigrationPriority | None = None,
    ) -> SaveStateEntry:
        """Register a VMSD (with its device) or iterable handlers under (idstr, instance_id).

        Args:
            idstr: the section name.
            instance_id: the instance, or INSTANCE_ID_ANY (-1) for the next free one.
            vmsd: the state description (exactly one of vmsd and handlers).
            handlers: the iterable hooks (exactly one of vmsd and handlers).
            opaque: the device object passed to the VMSD.
            version_id: the section version; default: the VMSD's version_id, else 1.
            priority: default: the VMSD's priority, else DEFAULT.

        Raises:
            SaveVMError: not exactly one of vmsd and handlers.
            DuplicateEntryError: (idstr, instance_id) is already registered.
        """
        if (vmsd is None) == (handlers is None):
            raise SaveVMError(f"entry '{idstr}' needs exactly one of vmsd and handlers")
        if instance_id == INSTANCE_ID_ANY:
            instance_id = 1 + max(
                (e.instance_id for e in self._entries if e.idstr == idstr), default=-1
            )
        if any(e.idstr == idstr and e.instance_id == instance_id for e in self._entries):
            raise DuplicateEntryError(
                f"Detected duplicate SaveStateEntry: id={idstr}, instance_id={instance_id}"
            )
        entry = SaveStateEntry(
            idstr=idstr,
            instance_id=instance_id,
            section_id=self._next_section_id,
            version_id=_version_of(vmsd, version_id),
            priority=_priority_of(vmsd, priority),
            vmsd=vmsd,
            handlers=handlers,
            opaque=opaque,
        )
        self._next_section_id += 1
        # After every entry of the same or a higher priority: stable within a priority.
        position = next(
            (i for i, e in enumerate(self._entries) if e.priority < entry.priority),
            len(self._entries),
        )
        self._entries.insert(position, entry)
        return entry

    def unregister(self, entry: SaveStateEntry) -> None:
        """Remove an entry (vmstate_unregister)."""
        self._entries.remove(entry)

    def find(self, idstr: str, instance_id: int) -> SaveStateEntry:
        """Return the entry for (idstr, instance_id) (QEMU's find_se).

        Raises:
            UnknownSectionError: no such entry, with QEMU's message.
        """
        for entry in self._entries:
            if entry.idstr == idstr and entry.instance_id == instance_id:
                return entry
        raise UnknownSectionError(
            f"Unknown section or instance '{idstr}' {instance_id}. Make sure that your current VM"
            " setup matches your saved VM setup, including any hotplugged devices"
        )

    def device_refs(self) -> list[tuple[str, int, int]]:
        """Return (idstr, instance_id, version_id) of every entry, in order."""
        return [(e.idstr, e.instance_id, e.version_id) for e in self._entries]

    def blockers(self) -> list[str]:
        """Return the idstr of every unmigratable entry."""
        return [e.idstr for e in self._entries if e.vmsd is not None and e.vmsd.unmigratable]

    def describe(self) -> dict[str, object]:
        """Return QEMU's vmdesc JSON for the VMSD entries: page_size and devices."""
        devices: list[dict[str, object]] = []
        for entry in self._entries:
            if entry.vmsd is None:
                continue  # iterable sections (RAM) have no vmdesc entry in QEMU either
            description = entry.vmsd.describe()
            devices.append({"name": entry.idstr, "instance_id": entry.instance_id, **description})
        return {"page_size": PAGE_SIZE, "devices": devices}

    def bind_load_section(self, section_id: int, entry: SaveStateEntry) -> None:
        """Remember which local entry an incoming section id stands for."""
        self._load_sections[section_id] = entry

    def load_section(self, section_id: int) -> SaveStateEntry:
        """Return the local entry bound to an incoming section id.

        Raises:
            UnknownSectionError: no START section announced that id.
        """
        try:
            return self._load_sections[section_id]
        except KeyError:
            msg = f"Unknown savevm section {section_id}"
            raise UnknownSectionError(msg) from None

    def clear_load_sections(self) -> None:
        """Forget the incoming section ids (end of a load)."""
        self._load_sections.clear()


def _version_of(vmsd: VMStateDescription[Any] | None, version_id: int | None) -> int:
    if version_id is not None:
        return version_id
    return vmsd.version_id if vmsd is not None else 1


def _priority_of(
    vmsd: VMStateDescription[Any] | None, priority: MigrationPriority | None
) -> MigrationPriority:
    chosen = priority if priority is not None else (vmsd.priority if vmsd else None)
    if chosen is None or chosen is MigrationPriority.UNINITIALIZED:
        return MigrationPriority.DEFAULT
    return MigrationPriority(chosen)
