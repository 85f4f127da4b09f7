"""A test device that uses every kind of field, shared by the VMState tests."""

from __future__ import annotations

import numpy as np

from vmsim import (
    VMStateDescription,
    field_bool,
    field_buffer,
    field_int,
    field_int_array,
    field_struct,
    field_uint,
    field_uint_array,
    field_vbuffer,
)


class Inner:
    def __init__(self):
        self.a = 0
        self.b = np.zeros(2, dtype=np.int16)


class Thing:
    def __init__(self):
        self.u8 = self.u16 = self.u32 = self.u64 = 0
        self.i8 = self.i16 = self.i32 = self.i64 = 0
        self.flag = False
        self.tag = b"\0\0\0\0"
        self.data_len = 0
        self.data = b""
        self.words = np.zeros(3, dtype=np.uint32)
        self.deltas = np.zeros(2, dtype=np.int64)
        self.inner = Inner()
        self.newer = 0
        self.optional = 0
        self.has_optional = False
        self.extra = 0
        self.extra_on = False
        self.calls = []


INNER_VMSD = VMStateDescription(
    name="inner",
    version_id=1,
    fields=(field_uint("a", 8), field_int_array("b", 16, 2)),
)

EXTRA_VMSD = VMStateDescription(
    name="thing/extra",
    version_id=2,
    minimum_version_id=1,
    needed=lambda thing: thing.extra_on,
    fields=(field_uint("extra", 32),),
    pre_load=lambda thing: thing.calls.append("extra.pre_load"),
    post_load=lambda thing, version: thing.calls.append(f"extra.post_load:{version}"),
)

THING_VMSD = VMStateDescription(
    name="thing",
    version_id=3,
    minimum_version_id=1,
    fields=(
        field_uint("u8", 8),
        field_uint("u16", 16),
        field_uint("u32", 32),
        field_uint("u64", 64),
        field_int("i8", 8),
        field_int("i16", 16),
        field_int("i32", 32),
        field_int("i64", 64),
        field_bool("flag"),
        field_buffer("tag", 4),
        field_uint("data_len", 8),
        field_vbuffer("data", "data_len", 8),
        field_uint_array("words", 32, 3),
        field_int_array("deltas", 64, 2),
        field_struct("inner", INNER_VMSD),
        field_uint("newer", 16, version_id=2),
        field_uint("optional", 8, field_exists=lambda thing, _version: thing.has_optional),
    ),
    subsections=(EXTRA_VMSD,),
    pre_save=lambda thing: thing.calls.append("pre_save"),
    post_save=lambda thing: thing.calls.append("post_save"),
    pre_load=lambda thing: thing.calls.append("pre_load"),
    post_load=lambda thing, version: thing.calls.append(f"post_load:{version}"),
)


def snapshot(thing):
    """Every field's value as plain data (for 'nothing changed' checks)."""
    return {
        key: (value.tolist() if isinstance(value, np.ndarray) else value)
        for key, value in vars(thing).items()
        if key not in {"inner", "calls"}
    } | {"inner.a": thing.inner.a, "inner.b": thing.inner.b.tolist()}
