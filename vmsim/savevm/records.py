"""The records the savevm framework produces and consumes (QEMU's section types).

They are protocol-agnostic: the daemon maps each record to a wire frame and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmsim.savevm.handlers import PageBatch

__all__ = ["SectionFull", "SectionPart", "SectionStart"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SectionStart:
    """QEMU_VM_SECTION_START: an iterable entry's header and its save_setup payload."""

    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    setup: dict[str, object]


@dataclass(frozen=True, kw_only=True, slots=True)
class SectionPart:
    """QEMU_VM_SECTION_PART (end=False) or QEMU_VM_SECTION_END (end=True): pages of a section."""

    section_id: int
    batch: PageBatch
    end: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class SectionFull:
    """QEMU_VM_SECTION_FULL: a device's whole state, as saved by its VMSD."""

    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    state: dict[str, object]
