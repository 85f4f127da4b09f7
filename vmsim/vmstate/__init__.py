"""QEMU's VMState: versioned device state descriptions, their fields and vmdesc."""

from __future__ import annotations

from vmsim.vmstate.description import MigrationPriority, VMStateDescription
from vmsim.vmstate.fields import (
    FieldKind,
    VMStateField,
    field_bool,
    field_buffer,
    field_int,
    field_int_array,
    field_struct,
    field_uint,
    field_uint_array,
    field_vbuffer,
)

__all__ = [
    "FieldKind",
    "MigrationPriority",
    "VMStateDescription",
    "VMStateField",
    "field_bool",
    "field_buffer",
    "field_int",
    "field_int_array",
    "field_struct",
    "field_uint",
    "field_uint_array",
    "field_vbuffer",
]
