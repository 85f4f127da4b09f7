"""Save -> load -> save is the identity: for a device using every field kind (random values)
and for every real device at every version it supports (states from random runs)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsim import (
    Machine,
    MachineConfig,
    VMStateDescription,
    WorkloadKind,
    field_bool,
    field_buffer,
    field_int,
    field_int_array,
    field_uint,
    field_uint_array,
    field_vbuffer,
)


def uint(bits):
    return st.integers(0, 2**bits - 1)


def sint(bits):
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


class Box:
    pass


SUB = VMStateDescription(
    name="box/sub", version_id=1, needed=lambda box: box.sub_on, fields=(field_int("s", 32),)
)
BOX = VMStateDescription(
    name="box",
    version_id=2,
    minimum_version_id=1,
    fields=(
        field_uint("u8", 8),
        field_uint("u16", 16),
        field_uint("u32", 32),
        field_uint("u64", 64),
        field_int("i8", 8),
        field_int("i64", 64),
        field_bool("b"),
        field_buffer("buf", 5),
        field_uint("n", 32),
        field_vbuffer("vbuf", "n", 16),
        field_uint_array("ua", 16, 4),
        field_int_array("ia", 8, 3, version_id=2),
    ),
    subsections=(SUB,),
)

boxes = st.fixed_dictionaries(
    {
        "u8": uint(8),
        "u16": uint(16),
        "u32": uint(32),
        "u64": uint(64),
        "i8": sint(8),
        "i64": sint(64),
        "b": st.booleans(),
        "buf": st.binary(min_size=5, max_size=5),
        "vbuf": st.binary(max_size=16),
        "ua": st.lists(uint(16), min_size=4, max_size=4),
        "ia": st.lists(sint(8), min_size=3, max_size=3),
        "sub_on": st.booleans(),
        "s": sint(32),
    }
)


def make_box(values):
    box = Box()
    for key, value in values.items():
        setattr(box, key, value)
    box.n = len(values["vbuf"])
    box.ua = np.array(values["ua"], dtype=np.uint16)
    box.ia = np.array(values["ia"], dtype=np.int8)
    return box


@given(values=boxes, version=st.integers(1, 2))
def test_every_field_kind_round_trips(values, version):
    state = BOX.save(make_box(values), version_id=version)
    zeros = {
        "u8": 0,
        "u16": 0,
        "u32": 0,
        "u64": 0,
        "i8": 0,
        "i64": 0,
        "b": False,
        "buf": bytes(5),
        "vbuf": b"",
        "ua": [0] * 4,
        "ia": [0] * 3,
        "sub_on": values["sub_on"],
        "s": 0,
    }
    target = make_box(zeros)
    BOX.load(target, state, version)

    assert state == BOX.save(target, version_id=version)


configs = st.builds(
    MachineConfig,
    ram_mib=st.just(4),
    workload=st.sampled_from(WorkloadKind),
    dirty_rate=st.integers(0, 30_000),
    vcpus=st.integers(1, 3),
    seed=st.integers(0, 2**64 - 1),
)


@settings(max_examples=25)
@given(config=configs, ticks=st.integers(0, 3000))
def test_every_device_round_trips_at_every_supported_version(config, ticks):
    source = Machine.boot(config)
    source.vm_start()
    source.run(ticks)
    source.stop_for_migration()
    target = Machine.for_incoming(config)
    target.ram.array[:] = source.ram.array  # the ITS restores its cache from RAM
    for entry in source.savevm.entries:
        if entry.vmsd is None:
            continue
        twin = target.savevm.find(entry.idstr, entry.instance_id)
        for version in range(entry.vmsd.minimum_version_id, entry.vmsd.version_id + 1):
            state = entry.vmsd.save(entry.opaque, version)
            entry.vmsd.load(twin.opaque, state, version)

            assert state == entry.vmsd.save(twin.opaque, version)
