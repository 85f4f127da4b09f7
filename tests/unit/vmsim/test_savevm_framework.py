"""The savevm framework's record sequence and its load-side checks."""

from __future__ import annotations

import pytest

from vmsim import (
    PAGE_SIZE,
    GuestRam,
    MigrationBlockedError,
    MigrationPriority,
    MissingSectionError,
    NotAllowed,
    PageBatch,
    RamSaveHandler,
    RunState,
    RunStateMachine,
    SaveVMError,
    SaveVMRegistry,
    SectionFull,
    SectionPart,
    SectionStart,
    UnknownSectionError,
    VMStateDescription,
    field_uint,
    load_check_complete,
    load_cleanup,
    load_section_full,
    load_section_part,
    load_section_start,
    state_cleanup,
    state_complete,
    state_iterate,
    state_pending_estimate,
    state_pending_exact,
    state_setup,
)

N_PAGES = 16


class Dev:
    def __init__(self, x=0, wanted=True):
        self.x = x
        self.wanted = wanted


def dev_vmsd(name, **kwargs):
    return VMStateDescription(name=name, version_id=1, fields=(field_uint("x", 32),), **kwargs)


def build(*, running=False, unmigratable=False, x=0):
    runstate = RunStateMachine(RunState.RUNNING if running else RunState.PAUSED)
    registry = SaveVMRegistry(runstate=runstate)
    ram = GuestRam(N_PAGES * PAGE_SIZE)
    ram.array[::3] = 1
    registry.register("early", 0, vmsd=dev_vmsd("early", early_setup=True), opaque=Dev(x))
    registry.register("ram", 0, handlers=RamSaveHandler(ram), version_id=4)
    registry.register(
        "skipped",
        0,
        vmsd=dev_vmsd("skipped", needed=lambda d: d.wanted),
        opaque=Dev(x, wanted=False),
    )
    registry.register("dev", 0, vmsd=dev_vmsd("dev", unmigratable=unmigratable), opaque=Dev(x))
    registry.register(
        "first", 0, vmsd=dev_vmsd("first", priority=MigrationPriority.APIC), opaque=Dev(x)
    )
    return registry, ram


def test_setup_sends_start_per_iterable_and_full_per_early_setup_vmsd_in_order():
    registry, ram = build()
    records = state_setup(registry)

    assert [SectionFull, SectionStart] == [type(r) for r in records]
    assert (records[0].idstr, records[1].idstr) == ("early", "ram")
    assert {"ram_size": ram.size_bytes, "page_size": PAGE_SIZE} == records[1].setup
    assert records[1].version_id == 4
    assert ram.dirty_log.active


def test_iterate_then_complete_sends_ends_then_needed_devices_in_entry_order():
    registry, ram = build()
    state_setup(registry)
    parts = []
    while (part := state_iterate(registry, 5)) is not None:
        parts.append(part)
    ram.write_bytes(3 * PAGE_SIZE, b"new")
    completion = list(state_complete(registry, 5))
    state_cleanup(registry)

    assert [p.batch.total_pages for p in parts] == [5, 5, 5, 1]
    assert not any(p.end for p in parts)
    assert [(r.end, r.batch.total_pages) for r in completion[:1]] == [(True, 1)]
    assert [r.idstr for r in completion[1:]] == ["first", "dev"]
    assert not ram.dirty_log.active


def test_complete_sends_one_empty_end_part_when_nothing_is_left():
    registry, _ = build()
    state_setup(registry)
    while state_iterate(registry, 100) is not None:
        pass
    completion = list(state_complete(registry, 100))

    assert isinstance(completion[0], SectionPart)
    assert completion[0].end
    assert completion[0].batch.n_runs == 0


def test_pending_estimate_and_exact():
    registry, ram = build()
    state_setup(registry)
    state_iterate(registry, N_PAGES)
    ram.write_bytes(0, b"x")

    assert state_pending_estimate(registry) == 0
    assert state_pending_exact(registry) == PAGE_SIZE


def test_complete_refuses_a_running_vm_when_called():
    registry, _ = build(running=True)
    state_setup(registry)

    with pytest.raises(NotAllowed, match="stopped"):
        state_complete(registry, 10)


def test_unmigratable_devices_block_setup_and_load():
    registry, _ = build(unmigratable=True)

    with pytest.raises(MigrationBlockedError) as caught:
        state_setup(registry)
    assert str(caught.value) == "State blocked by non-migratable device 'dev'"

    record = SectionFull(
        section_id=9,
        idstr="dev",
        instance_id=0,
        version_id=1,
        state={"fields": {"x": 1}, "subsections": {}},
    )
    with pytest.raises(MigrationBlockedError):
        load_section_full(registry, record)


def test_full_migration_of_the_registry_loads_everything():
    source, source_ram = build(x=42)
    destination, destination_ram = build()
    for record in state_setup(source):
        (load_section_start if isinstance(record, SectionStart) else load_section_full)(
            destination, record
        )
    while (part := state_iterate(source, 3)) is not None:
        load_section_part(destination, part)
    for record in state_complete(source, 3):
        (load_section_part if isinstance(record, SectionPart) else load_section_full)(
            destination, record
        )
    load_cleanup(destination)

    assert bytes(source_ram.view) == bytes(destination_ram.view)
    assert [
        destination.find(name, 0).opaque.x for name in ("early", "skipped", "dev", "first")
    ] == [42, 0, 42, 42]


def test_part_for_an_unannounced_section_is_refused():
    registry, _ = build()
    part = SectionPart(section_id=77, batch=PageBatch.empty(), end=False)

    with pytest.raises(UnknownSectionError, match="Unknown savevm section 77"):
        load_section_part(registry, part)


def test_section_ids_are_forgotten_after_load_cleanup():
    source, _ = build()
    destination, _ = build()
    start = next(r for r in state_setup(source) if isinstance(r, SectionStart))
    load_section_start(destination, start)
    load_cleanup(destination)

    with pytest.raises(UnknownSectionError):
        load_section_part(
            destination, SectionPart(section_id=start.section_id, batch=PageBatch.empty(), end=True)
        )


def test_start_for_a_device_and_full_for_ram_are_refused():
    registry, _ = build()
    start = SectionStart(section_id=0, idstr="dev", instance_id=0, version_id=1, setup={})
    full = SectionFull(section_id=1, idstr="ram", instance_id=0, version_id=4, state={})

    with pytest.raises(SaveVMError, match="not iterable"):
        load_section_start(registry, start)
    with pytest.raises(SaveVMError, match="is iterable"):
        load_section_full(registry, full)


def test_setup_skips_an_early_setup_device_whose_needed_is_false():
    """QEMU's vmstate_save: a top-level VMSD whose needed() is false sends no section at all,
    in the setup phase as in the completion phase."""
    registry, _ = build()
    registry.register(
        "early-unneeded",
        0,
        vmsd=dev_vmsd("early-unneeded", early_setup=True, needed=lambda d: d.wanted),
        opaque=Dev(7, wanted=False),
    )
    registry.register(
        "early-needed",
        0,
        vmsd=dev_vmsd("early-needed", early_setup=True, needed=lambda d: d.wanted),
        opaque=Dev(7, wanted=True),
    )
    setup = state_setup(registry)
    completion = list(state_complete(registry, N_PAGES))

    assert ["early", "ram", "early-needed"] == [r.idstr for r in setup]
    assert "early-unneeded" not in {getattr(r, "idstr", None) for r in completion}


def migrate_registry(source, destination):
    """Send every record of source into destination; return the (idstr, instance) of FULLs."""
    received = set()

    def load(record):
        if isinstance(record, SectionStart):
            load_section_start(destination, record)
        elif isinstance(record, SectionPart):
            load_section_part(destination, record)
        else:
            load_section_full(destination, record)
            received.add((record.idstr, record.instance_id))

    for record in state_setup(source):
        load(record)
    while (part := state_iterate(source, 5)) is not None:
        load(part)
    for record in state_complete(source, 5):
        load(record)
    state_cleanup(source)
    load_cleanup(destination)
    return received


def test_load_check_complete_accepts_a_device_the_source_did_not_need():
    """'skipped' has a needed() callback and was not needed on the source: QEMU sends nothing
    and the destination keeps its reset state, so the load is complete without it."""
    source, _ = build(x=5)
    destination, _ = build()
    received = migrate_registry(source, destination)

    assert {("early", 0), ("first", 0), ("dev", 0)} == received
    load_check_complete(destination, received)
    assert 0 == destination.find("skipped", 0).opaque.x


def test_load_check_complete_names_every_missing_device_in_registry_order():
    """A device without a needed() callback must arrive; every missing one is named."""
    destination, _ = build()

    with pytest.raises(MissingSectionError) as caught:
        load_check_complete(destination, {("early", 0), ("ram", 0)})

    assert "missing device state for 'first' instance 0, 'dev' instance 0" == str(caught.value)
    assert (("first", 0), ("dev", 0)) == caught.value.missing


def test_load_check_complete_requires_a_needed_device_only_when_it_has_no_callback():
    """Only the local VMSD decides: a device whose VMSD has needed() may be absent even if
    needed() is true here; iterable entries (RAM) are not device state and are not checked."""
    destination, _ = build()
    destination.find("skipped", 0).opaque.wanted = True

    load_check_complete(destination, {("early", 0), ("first", 0), ("dev", 0)})
