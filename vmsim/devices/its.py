"""An interrupt translation service in the manner of the GICv3 ITS ("its").

The ITS maps event ids to where the guest's interrupt handler writes. The translations live in
a private cache while the VM runs; like KVM's ITS (KVM_DEV_ARM_ITS_SAVE_TABLES, called from the
change-state handler when the VM stops) the cache is written into a reserved region of guest
RAM on stop, through GuestRam so the pages are dirty-logged, and `post_load` rebuilds the cache
from guest RAM (KVM_DEV_ARM_ITS_RESTORE_TABLES). The VMSD carries only the registers.

So a migration that sends the final RAM before the stop handlers ran, or loses the pages they
dirtied, restores a stale cache: interrupts then write elsewhere, and the digest shows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from vmsim.config import PAGE_SIZE
from vmsim.errors import InvalidStateError
from vmsim.prng import U64_MASK
from vmsim.vmstate.description import MigrationPriority, VMStateDescription
from vmsim.vmstate.fields import field_uint

if TYPE_CHECKING:
    from vmsim.layout import MachineLayout
    from vmsim.ram import GuestRam
    from vmsim.runstate import RunState

__all__ = ["ITS_VMSD", "N_EVENTS", "Its"]

N_EVENTS: Final = 64
"""Event ids the translation table covers."""

TABLE_MAGIC: Final = 0x4C4D_4954_5331_0001  # "LMITS1" + format 1
_HEADER_WORDS: Final = 2
_CTLR_ENABLED: Final = 1
_BASER_VALID: Final = 1 << 63
_IIDR_LIVEMIG: Final = 0x4C4D_0100
_COMMAND_BYTES: Final = 32
_WORD_BYTES: Final = 8
_ENTRY_VALID: Final = 1  # entries hold an 8-aligned address, so bit 0 is free for "valid"


class Its:
    """ITS registers, the private translation cache, and the table save/restore.

    Attributes:
        ctlr: control register (enabled).
        iidr: implementer id.
        baser: table base register: the reserved region's address | valid.
        cwriter: command queue write offset (advances by one command per MAPTI).
        creadr: command queue read offset (commands complete at once: equals cwriter).
        cache: the translation cache: per event id, target address | 1, or 0 if unmapped.
    """

    def __init__(self, ram: GuestRam, layout: MachineLayout) -> None:
        self._ram = ram
        self._layout = layout
        self.ctlr = _CTLR_ENABLED
        self.iidr = _IIDR_LIVEMIG
        self.baser = layout.its_table_address | _BASER_VALID
        self.cwriter = 0
        self.creadr = 0
        self.cache = np.zeros(N_EVENTS, dtype=np.uint64)

    def map_event(self, event_id: int, target_address: int) -> None:
        """MAPTI: route an event id to a guest address (8-aligned, in the working set)."""
        self.cache[event_id % N_EVENTS] = target_address | _ENTRY_VALID
        self.cwriter = (self.cwriter + _COMMAND_BYTES) & U64_MASK
        self.creadr = self.cwriter

    def translate(self, event_id: int) -> int | None:
        """Return the guest address an event id maps to, or None if it is unmapped."""
        entry = int(self.cache[event_id % N_EVENTS])
        return entry & ~_ENTRY_VALID if entry & _ENTRY_VALID else None

    def on_change_state(self, running: bool, _state: RunState) -> None:  # noqa: FBT001
        """Change-state handler: save the tables into guest RAM when the VM stops."""
        if not running:
            self.save_tables()

    def save_tables(self) -> None:
        """Write the cache into the reserved region of guest RAM (dirty-logged)."""
        table = np.zeros(PAGE_SIZE // 8, dtype=np.uint64)
        table[0] = TABLE_MAGIC
        table[1] = N_EVENTS
        table[_HEADER_WORDS : _HEADER_WORDS + N_EVENTS] = self.cache
        self._ram.write_bytes(self._layout.its_table_address, table.view(np.uint8))

    def restore_tables(self) -> None:
        """Rebuild the cache from the reserved region of guest RAM, validating every entry.

        Raises:
            InvalidStateError: the region does not hold valid tables.
        """
        start = self._layout.its_table_address // 8
        table = self._ram.words[start : start + _HEADER_WORDS + N_EVENTS]
        if int(table[0]) != TABLE_MAGIC or int(table[1]) != N_EVENTS:
            raise _its_error("baser", "no ITS tables at the table base (magic or size wrong)")
        entries = table[_HEADER_WORDS:].copy()
        addresses = entries & ~np.uint64(_ENTRY_VALID)
        valid = (entries & np.uint64(_ENTRY_VALID)) != 0
        limit = self._layout.working_set_pages * PAGE_SIZE
        in_page = addresses % np.uint64(PAGE_SIZE)
        bad = valid & (
            (addresses >= limit)
            | (addresses % np.uint64(_WORD_BYTES) != 0)
            | (in_page < _WORD_BYTES)
        )
        if np.any(bad | (~valid & (entries != 0))):
            event_id = int(np.flatnonzero(bad | (~valid & (entries != 0)))[0])
            raise _its_error("baser", f"invalid translation for event {event_id}")
        self.cache = entries

    def internal_state(self) -> dict[str, object]:
        """State outside the VMSD that still belongs to the machine (for the digest)."""
        return {"cache": self.cache.tolist()}


def _its_error(field: str, detail: str) -> InvalidStateError:
    return InvalidStateError(f"field '{field}': {detail}", device="its", field=field)


def _its_post_load(its: Its, _version_id: int) -> None:
    expected = its._layout.its_table_address | _BASER_VALID  # noqa: SLF001 - own device
    if its.baser != expected:
        raise _its_error("baser", f"{its.baser:#x} != {expected:#x}")
    if its.creadr != its.cwriter:
        raise _its_error("creadr", "commands pending in a stopped ITS")
    its.restore_tables()


ITS_VMSD: Final[VMStateDescription[Its]] = VMStateDescription(
    name="its",
    version_id=1,
    minimum_version_id=1,
    priority=MigrationPriority.GICV3_ITS,
    fields=(
        field_uint("ctlr", 32),
        field_uint("iidr", 32),
        field_uint("baser", 64),
        field_uint("cwriter", 64),
        field_uint("creadr", 64),
    ),
    post_load=_its_post_load,
)
