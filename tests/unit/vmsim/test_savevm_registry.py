"""SaveVMRegistry: order by priority, section ids, duplicates, lookups and vmdesc."""

from __future__ import annotations

import pytest

from vmsim import (
    INSTANCE_ID_ANY,
    PAGE_SIZE,
    DuplicateEntryError,
    GuestRam,
    MigrationPriority,
    RamSaveHandler,
    SaveVMError,
    SaveVMRegistry,
    UnknownSectionError,
    VMStateDescription,
    field_uint,
)


def vmsd(name, priority=MigrationPriority.UNINITIALIZED, **kwargs):
    return VMStateDescription(
        name=name, version_id=1, fields=(field_uint("x", 8),), priority=priority, **kwargs
    )


class Dev:
    x = 0


def test_entries_are_ordered_by_priority_then_registration():
    registry = SaveVMRegistry()
    registry.register("a", 0, vmsd=vmsd("a"), opaque=Dev())
    registry.register("its", 0, vmsd=vmsd("its", MigrationPriority.GICV3_ITS), opaque=Dev())
    registry.register("low", 0, vmsd=vmsd("low", MigrationPriority.LOW), opaque=Dev())
    registry.register("b", 0, vmsd=vmsd("b", MigrationPriority.DEFAULT), opaque=Dev())
    registry.register("gic", 0, vmsd=vmsd("gic", MigrationPriority.GICV3), opaque=Dev())
    registry.register("c", 0, vmsd=vmsd("c"), opaque=Dev(), priority=MigrationPriority.IOMMU)

    assert [e.idstr for e in registry.entries] == ["gic", "its", "c", "a", "b", "low"]
    assert [e.section_id for e in registry.entries] == [4, 1, 5, 0, 3, 2]
    assert registry.find("a", 0).priority == MigrationPriority.DEFAULT


def test_priority_values_are_qemus():
    assert [p.value for p in MigrationPriority] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert (
        MigrationPriority(0).name,
        MigrationPriority(8).name,
    ) == ("UNINITIALIZED", "GICV3")


def test_instance_id_any_takes_the_next_free_instance():
    registry = SaveVMRegistry()
    ids = [registry.register("cpu", INSTANCE_ID_ANY, vmsd=vmsd("cpu")).instance_id for _ in "abc"]
    registry.register("cpu", 7, vmsd=vmsd("cpu"))

    assert ids == [0, 1, 2]
    assert registry.register("cpu", INSTANCE_ID_ANY, vmsd=vmsd("cpu")).instance_id == 8


def test_duplicates_are_refused_with_qemus_message():
    registry = SaveVMRegistry()
    registry.register("serial", 0, vmsd=vmsd("serial"))

    with pytest.raises(DuplicateEntryError) as caught:
        registry.register("serial", 0, vmsd=vmsd("serial"))

    assert str(caught.value) == "Detected duplicate SaveStateEntry: id=serial, instance_id=0"


def test_an_entry_needs_exactly_one_of_vmsd_and_handlers():
    registry = SaveVMRegistry()
    handlers = RamSaveHandler(GuestRam(PAGE_SIZE))

    with pytest.raises(SaveVMError, match="exactly one"):
        registry.register("x", 0)
    with pytest.raises(SaveVMError, match="exactly one"):
        registry.register("x", 0, vmsd=vmsd("x"), handlers=handlers)


def test_find_and_its_error():
    registry = SaveVMRegistry()
    entry = registry.register("ram", 0, handlers=RamSaveHandler(GuestRam(PAGE_SIZE)), version_id=4)

    assert entry is registry.find("ram", 0)
    assert entry.is_iterable
    with pytest.raises(UnknownSectionError) as caught:
        registry.find("x", 0)
    assert str(caught.value) == (
        "Unknown section or instance 'x' 0. Make sure that your current VM setup matches your"
        " saved VM setup, including any hotplugged devices"
    )


def test_device_refs_and_versions():
    registry = SaveVMRegistry()
    registry.register("ram", 0, handlers=RamSaveHandler(GuestRam(PAGE_SIZE)), version_id=4)
    registry.register("dev", 3, vmsd=vmsd("dev"))
    registry.register("old", 0, vmsd=vmsd("old"), version_id=0)

    assert registry.device_refs() == [("ram", 0, 4), ("dev", 3, 1), ("old", 0, 0)]


def test_describe_lists_vmsd_devices_only():
    registry = SaveVMRegistry()
    registry.register("ram", 0, handlers=RamSaveHandler(GuestRam(PAGE_SIZE)), version_id=4)
    registry.register("dev", 2, vmsd=vmsd("devvmsd"))

    assert registry.describe() == {
        "page_size": PAGE_SIZE,
        "devices": [
            {
                "name": "dev",
                "instance_id": 2,
                "vmsd_name": "devvmsd",
                "version": 1,
                "fields": [{"name": "x", "type": "uint8", "size": 1}],
                "subsections": [],
            }
        ],
    }


def test_unregister_removes_the_entry():
    registry = SaveVMRegistry()
    entry = registry.register("dev", 0, vmsd=vmsd("dev"))
    registry.unregister(entry)

    assert registry.entries == ()
