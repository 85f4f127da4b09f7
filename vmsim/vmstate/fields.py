"""VMState fields: what one named piece of device state is, and how it is checked.

A field reads and writes the attribute of the same name on the device object (QEMU uses a
struct offset; we use the name). Saved values are plain msgpack-friendly values: int, bool,
bytes, list of int, or a nested state dict for a struct.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, SupportsInt, cast

import numpy as np

from vmsim.errors import VMStateDefinitionError

if TYPE_CHECKING:
    from vmsim.vmstate.description import VMStateDescription

__all__ = [
    "FieldKind",
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

_INT_BITS: Final = (8, 16, 32, 64)

FieldExists = Callable[[Any, int], bool]
"""QEMU's field_exists(opaque, version_id): whether the field is in a stream of that version."""


class FieldKind(StrEnum):
    """The kinds of field QEMU's VMSTATE_* macros cover that devices here use."""

    UINT = "uint"
    INT = "int"
    BOOL = "bool"
    BUFFER = "buffer"
    VBUFFER = "vbuffer"
    UINT_ARRAY = "uint_array"
    INT_ARRAY = "int_array"
    STRUCT = "struct"


@dataclass(frozen=True, kw_only=True, slots=True)
class VMStateField:
    """One field of a VMStateDescription.

    Attributes:
        name: the field's name, also the attribute it reads and writes on the device.
        kind: what the field holds.
        bits: width of an integer or of an integer array's elements (8, 16, 32 or 64).
        size: bytes of a fixed buffer, maximum bytes of a variable buffer, or array length.
        length_field: for a variable buffer, the integer field (declared before it) that
            holds its length.
        vmsd: for a struct, the description of the nested object.
        version_id: the first version that has the field (0: every version).
        field_exists: overrides version_id: (device, stream version) -> present?
    """

    name: str
    kind: FieldKind
    bits: int = 64
    size: int = 0
    length_field: str | None = None
    vmsd: VMStateDescription[Any] | None = None
    version_id: int = 0
    field_exists: FieldExists | None = None

    def exists(self, opaque: object, version_id: int) -> bool:
        """Whether the field is part of a stream of version_id (QEMU's vmstate_field_exists)."""
        if self.field_exists is not None:
            return self.field_exists(opaque, version_id)
        return self.version_id <= version_id

    @property
    def type_name(self) -> str:
        """The vmdesc type name: uint64, int32, bool, buffer or struct."""
        if self.kind in (FieldKind.UINT, FieldKind.UINT_ARRAY):
            return f"uint{self.bits}"
        if self.kind in (FieldKind.INT, FieldKind.INT_ARRAY):
            return f"int{self.bits}"
        if self.kind in (FieldKind.BUFFER, FieldKind.VBUFFER):
            return "buffer"
        return str(self.kind)

    def save(self, opaque: object) -> object:
        """Return the field's value on the device as a plain value."""
        value = getattr(opaque, self.name)
        return _SAVERS[self.kind](self, value)

    def check(self, value: object, incoming: Mapping[str, object]) -> str | None:
        """Return why value is not valid for this field, or None if it is.

        Args:
            value: the incoming value.
            incoming: all incoming fields of the same device (a variable buffer's length).
        """
        return _CHECKERS[self.kind](self, value, incoming)

    def assign(self, opaque: object, value: object) -> None:
        """Store a checked value on the device (not for structs: they load recursively)."""
        if self.kind in (FieldKind.UINT_ARRAY, FieldKind.INT_ARRAY):
            value = np.array(value, dtype=self._dtype())
        setattr(opaque, self.name, value)

    def describe(self) -> dict[str, object]:
        """Return the field's vmdesc entry: name, type, size (+ array_len or struct)."""
        entry: dict[str, object] = {"name": self.name, "type": self.type_name}
        entry["size"] = self.element_size_bytes
        if self.kind in (FieldKind.UINT_ARRAY, FieldKind.INT_ARRAY):
            entry["array_len"] = self.size
        if self.vmsd is not None:
            entry["struct"] = self.vmsd.describe()
        return entry

    @property
    def element_size_bytes(self) -> int:
        """Size in bytes of one element (vmdesc's "size")."""
        if self.kind in (FieldKind.BUFFER, FieldKind.VBUFFER):
            return self.size
        if self.kind is FieldKind.BOOL:
            return 1
        if self.vmsd is not None:
            return self.vmsd.size_bytes
        return self.bits // 8

    @property
    def total_size_bytes(self) -> int:
        """Size in bytes of the whole field (arrays: every element)."""
        if self.kind in (FieldKind.UINT_ARRAY, FieldKind.INT_ARRAY):
            return self.size * self.bits // 8
        return self.element_size_bytes

    def _dtype(self) -> type[np.integer[Any]]:
        signed = self.kind is FieldKind.INT_ARRAY
        return np.dtype(f"{'i' if signed else 'u'}{self.bits // 8}").type

    def int_range(self) -> tuple[int, int]:
        """The inclusive range of an integer field or array element."""
        if self.kind in (FieldKind.INT, FieldKind.INT_ARRAY):
            half = 1 << (self.bits - 1)
            return -half, half - 1
        return 0, (1 << self.bits) - 1


def _save_int(_field: VMStateField, value: object) -> object:
    return int(cast("SupportsInt", value))


def _save_bool(_field: VMStateField, value: object) -> object:
    return bool(value)


def _save_bytes(_field: VMStateField, value: object) -> object:
    return bytes(cast("bytes", value))


def _save_array(_field: VMStateField, value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return [int(element) for element in cast("Iterable[SupportsInt]", value)]


def _save_struct(field: VMStateField, value: object) -> object:
    assert field.vmsd is not None  # noqa: S101 - guaranteed by field_struct
    return field.vmsd.save(value)


def _int_problem(field: VMStateField, value: object) -> str | None:
    # bool is an int subclass, but a bool in an integer field is a type confusion.
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected {field.type_name}, got {type(value).__name__}"
    lowest, highest = field.int_range()
    if not lowest <= value <= highest:
        return f"value {value} out of range for {field.type_name}"
    return None


def _check_int(field: VMStateField, value: object, _incoming: Mapping[str, object]) -> str | None:
    return _int_problem(field, value)


def _check_bool(_field: VMStateField, value: object, _incoming: Mapping[str, object]) -> str | None:
    if not isinstance(value, bool):
        return f"expected bool, got {type(value).__name__}"
    return None


def _check_buffer(
    field: VMStateField, value: object, _incoming: Mapping[str, object]
) -> str | None:
    if not isinstance(value, bytes):
        return f"expected bytes, got {type(value).__name__}"
    if len(value) != field.size:
        return f"expected {field.size} bytes, got {len(value)}"
    return None


def _check_vbuffer(
    field: VMStateField, value: object, incoming: Mapping[str, object]
) -> str | None:
    if not isinstance(value, bytes):
        return f"expected bytes, got {type(value).__name__}"
    length = incoming.get(field.length_field or "")
    if len(value) > field.size:
        return f"{len(value)} bytes exceed the maximum of {field.size}"
    if length != len(value):
        return f"{len(value)} bytes but length field '{field.length_field}' says {length!r}"
    return None


def _check_array(field: VMStateField, value: object, _incoming: Mapping[str, object]) -> str | None:
    if not isinstance(value, list):
        return f"expected a list of {field.size} {field.type_name}, got {type(value).__name__}"
    if len(value) != field.size:
        return f"expected {field.size} elements, got {len(value)}"
    for index, element in enumerate(value):
        problem = _int_problem(field, element)
        if problem is not None:
            return f"element {index}: {problem}"
    return None


def _check_struct(
    _field: VMStateField, value: object, _incoming: Mapping[str, object]
) -> str | None:
    # The nested description checks the contents; here only the shape.
    if not isinstance(value, dict):
        return f"expected a struct state (dict), got {type(value).__name__}"
    return None


_Saver = Callable[[VMStateField, object], object]
_Checker = Callable[[VMStateField, object, Mapping[str, object]], "str | None"]

_SAVERS: Final[Mapping[FieldKind, _Saver]] = {
    FieldKind.UINT: _save_int,
    FieldKind.INT: _save_int,
    FieldKind.BOOL: _save_bool,
    FieldKind.BUFFER: _save_bytes,
    FieldKind.VBUFFER: _save_bytes,
    FieldKind.UINT_ARRAY: _save_array,
    FieldKind.INT_ARRAY: _save_array,
    FieldKind.STRUCT: _save_struct,
}

_CHECKERS: Final[Mapping[FieldKind, _Checker]] = {
    FieldKind.UINT: _check_int,
    FieldKind.INT: _check_int,
    FieldKind.BOOL: _check_bool,
    FieldKind.BUFFER: _check_buffer,
    FieldKind.VBUFFER: _check_vbuffer,
    FieldKind.UINT_ARRAY: _check_array,
    FieldKind.INT_ARRAY: _check_array,
    FieldKind.STRUCT: _check_struct,
}


def _check_bits(bits: int) -> int:
    if bits not in _INT_BITS:
        msg = f"integer width must be one of {_INT_BITS}, got {bits}"
        raise VMStateDefinitionError(msg)
    return bits


def field_uint(
    name: str, bits: int = 64, *, version_id: int = 0, field_exists: FieldExists | None = None
) -> VMStateField:
    """An unsigned integer (VMSTATE_UINT8/16/32/64)."""
    bits = _check_bits(bits)
    return VMStateField(
        name=name, kind=FieldKind.UINT, bits=bits, version_id=version_id, field_exists=field_exists
    )


def field_int(
    name: str, bits: int = 64, *, version_id: int = 0, field_exists: FieldExists | None = None
) -> VMStateField:
    """A signed integer (VMSTATE_INT8/16/32/64)."""
    bits = _check_bits(bits)
    return VMStateField(
        name=name, kind=FieldKind.INT, bits=bits, version_id=version_id, field_exists=field_exists
    )


def field_bool(
    name: str, *, version_id: int = 0, field_exists: FieldExists | None = None
) -> VMStateField:
    """A boolean (VMSTATE_BOOL)."""
    return VMStateField(
        name=name, kind=FieldKind.BOOL, bits=8, version_id=version_id, field_exists=field_exists
    )


def field_buffer(
    name: str, size_bytes: int, *, version_id: int = 0, field_exists: FieldExists | None = None
) -> VMStateField:
    """A fixed-size byte buffer (VMSTATE_BUFFER)."""
    return VMStateField(
        name=name,
        kind=FieldKind.BUFFER,
        size=size_bytes,
        version_id=version_id,
        field_exists=field_exists,
    )


def field_vbuffer(
    name: str,
    length_field: str,
    max_size_bytes: int,
    *,
    version_id: int = 0,
    field_exists: FieldExists | None = None,
) -> VMStateField:
    """A variable-size byte buffer whose length is an earlier integer field (VMSTATE_VBUFFER)."""
    return VMStateField(
        name=name,
        kind=FieldKind.VBUFFER,
        size=max_size_bytes,
        length_field=length_field,
        version_id=version_id,
        field_exists=field_exists,
    )


def field_uint_array(
    name: str,
    bits: int,
    length: int,
    *,
    version_id: int = 0,
    field_exists: FieldExists | None = None,
) -> VMStateField:
    """A fixed-length array of unsigned integers, a numpy array on the device."""
    return VMStateField(
        name=name,
        kind=FieldKind.UINT_ARRAY,
        bits=_check_bits(bits),
        size=length,
        version_id=version_id,
        field_exists=field_exists,
    )


def field_int_array(
    name: str,
    bits: int,
    length: int,
    *,
    version_id: int = 0,
    field_exists: FieldExists | None = None,
) -> VMStateField:
    """A fixed-length array of signed integers, a numpy array on the device."""
    return VMStateField(
        name=name,
        kind=FieldKind.INT_ARRAY,
        bits=_check_bits(bits),
        size=length,
        version_id=version_id,
        field_exists=field_exists,
    )


def field_struct(
    name: str,
    vmsd: VMStateDescription[Any],
    *,
    version_id: int = 0,
    field_exists: FieldExists | None = None,
) -> VMStateField:
    """A nested object described by its own VMSD (VMSTATE_STRUCT)."""
    return VMStateField(
        name=name,
        kind=FieldKind.STRUCT,
        vmsd=vmsd,
        version_id=version_id,
        field_exists=field_exists,
    )
