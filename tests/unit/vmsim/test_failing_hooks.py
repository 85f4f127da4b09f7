"""Hooks that fail, as QEMU's can: a hook raises HookError and the framework turns it into an
error naming the device and the hook, without leaving the registry or the machine broken."""

from __future__ import annotations

import pytest

from vmsim import (
    PAGE_SIZE,
    ChangeStateError,
    GuestRam,
    HookError,
    LoadHookError,
    Machine,
    MachineConfig,
    RamSaveHandler,
    RunState,
    RunStateMachine,
    SaveHookError,
    SaveVMError,
    SaveVMRegistry,
    SectionFull,
    VMStateDescription,
    VMStateError,
    WorkloadKind,
    field_uint,
    load_section_full,
    replay,
    state_cleanup,
    state_complete,
    state_iterate,
    state_setup,
)
from vmsim.devices.its import N_EVENTS, TABLE_MAGIC
from vmsim.testing import migrate_in_memory

CONFIG = MachineConfig(ram_mib=4, vcpus=2, workload=WorkloadKind.RANDOM, dirty_rate=40_000)
TICKS_BEFORE = 700
TICKS_AFTER = 500


class Flaky:
    """A device whose hooks record their calls and raise HookError while named in `failing`."""

    def __init__(self, x=0):
        self.x = x
        self.failing = set()
        self.calls = []


def hook(name):
    def call(device, *_version):
        device.calls.append(name)
        if name in device.failing:
            raise HookError(f"{name} refused by the backend")

    return call


def flaky_vmsd(name="flaky", **kwargs):
    return VMStateDescription(
        name=name,
        version_id=1,
        fields=(field_uint("x", 32),),
        pre_save=hook(f"{name}.pre_save"),
        post_save=hook(f"{name}.post_save"),
        pre_load=hook(f"{name}.pre_load"),
        post_load=hook(f"{name}.post_load"),
        **kwargs,
    )


FLAKY_SUB_VMSD = flaky_vmsd("flaky/sub", needed=lambda device: True)
FLAKY_VMSD = flaky_vmsd(subsections=(FLAKY_SUB_VMSD,))


# --------------------------------------------------------------------------- pre_save, post_save


def test_a_failing_pre_save_fails_the_save_naming_device_and_hook():
    """QEMU's vmstate_save_state: a failing pre_save aborts the save and post_save is not run."""
    device = Flaky()
    device.failing.add("flaky.pre_save")

    with pytest.raises(SaveHookError) as caught:
        FLAKY_VMSD.save(device)

    assert "flaky: pre_save hook failed: flaky.pre_save refused by the backend" == str(caught.value)
    assert ("flaky", "pre_save") == (caught.value.device, caught.value.hook)
    assert ["flaky.pre_save"] == device.calls


def test_a_failing_subsection_pre_save_still_runs_the_parents_post_save():
    """QEMU runs the parent's post_save after a failed subsection save, to undo its pre_save."""
    device = Flaky()
    device.failing.add("flaky/sub.pre_save")

    with pytest.raises(SaveHookError) as caught:
        FLAKY_VMSD.save(device)

    assert ("flaky/sub", "pre_save") == (caught.value.device, caught.value.hook)
    assert ["flaky.pre_save", "flaky/sub.pre_save", "flaky.post_save"] == device.calls


def test_a_failing_post_save_fails_the_save_too():
    """QEMU: "post-save failed: <vmsd>" when the save had not failed before."""
    device = Flaky()
    device.failing.add("flaky.post_save")

    with pytest.raises(SaveHookError) as caught:
        FLAKY_VMSD.save(device)

    assert ("flaky", "post_save") == (caught.value.device, caught.value.hook)


def registry_with(vmsd, device):
    registry = SaveVMRegistry(runstate=RunStateMachine(RunState.PAUSED))
    ram = GuestRam(8 * PAGE_SIZE)
    registry.register("ram", 0, handlers=RamSaveHandler(ram), version_id=4)
    registry.register("flaky", 0, vmsd=vmsd, opaque=device)
    return registry, ram


def test_a_failing_early_setup_pre_save_fails_state_setup_and_cleanup_still_works():
    """The save fails with a SaveVMError naming the device; state_cleanup ends it as usual and a
    new save can start once the device is well again."""
    device = Flaky(x=3)
    device.failing.add("flaky.pre_save")
    registry, ram = registry_with(flaky_vmsd(early_setup=True), device)

    with pytest.raises(SaveVMError) as caught:
        state_setup(registry)
    state_cleanup(registry)

    assert isinstance(caught.value, SaveHookError)
    assert (
        "error while saving state for instance 0x0 of device 'flaky': pre_save hook failed:"
        " flaky.pre_save refused by the backend"
    ) == str(caught.value)
    assert not ram.dirty_log.active
    device.failing.clear()
    assert ["ram", "flaky"] == [record.idstr for record in state_setup(registry)]


def test_a_failing_pre_save_fails_state_complete_and_the_save_can_be_retried():
    """The error comes when the device's FULL section is produced; after state_cleanup a whole
    new save goes through and carries the device's state."""
    device = Flaky(x=9)
    device.failing.add("flaky.pre_save")
    registry, ram = registry_with(flaky_vmsd(), device)
    state_setup(registry)
    while state_iterate(registry, 3) is not None:
        pass

    with pytest.raises(SaveHookError, match="of device 'flaky': pre_save hook failed"):
        list(state_complete(registry, 3))
    state_cleanup(registry)

    assert not ram.dirty_log.active
    device.failing.clear()
    state_setup(registry)
    records = list(state_complete(registry, 3))
    state_cleanup(registry)
    assert {"fields": {"x": 9}, "subsections": {}} == records[-1].state


def test_a_source_whose_device_fails_pre_save_at_completion_resumes_like_the_replay():
    """The migration fails at completion (the VM is stopped); the source cleans up and resumes,
    and its digest after N ticks is still the replay's. A later migration succeeds."""
    source = Machine.boot(CONFIG)
    device = Flaky()
    entry = source.savevm.register("flaky", 0, vmsd=flaky_vmsd(), opaque=device)
    source.vm_start()
    source.run(TICKS_BEFORE)
    state_setup(source.savevm)
    while state_iterate(source.savevm, 64) is not None:
        source.run(2)
    old_state = source.stop_for_migration()
    device.failing.add("flaky.pre_save")

    with pytest.raises(SaveHookError, match="device 'flaky'"):
        for _ in state_complete(source.savevm, 64):
            pass
    state_cleanup(source.savevm)
    assert RunState.RUNNING == old_state
    source.vm_start()
    source.run(TICKS_AFTER)
    source.savevm.unregister(entry)  # the test device is not part of the replayed machine
    source.vm_stop()
    assert replay(CONFIG, source.ticks) == source.digest()

    source.vm_start()
    destination = migrate_in_memory(source, ticks_per_batch=1)
    destination.vm_start()
    destination.run(TICKS_AFTER)
    destination.vm_stop()
    assert replay(CONFIG, destination.ticks) == destination.digest()


# --------------------------------------------------------------------------- pre_load, post_load


@pytest.mark.parametrize(
    ("failing", "calls"),
    [
        ("flaky.pre_load", ["flaky.pre_load"]),
        ("flaky/sub.pre_load", ["flaky.pre_load", "flaky/sub.pre_load"]),
        (
            "flaky/sub.post_load",
            ["flaky.pre_load", "flaky/sub.pre_load", "flaky/sub.post_load"],
        ),
        (
            "flaky.post_load",
            ["flaky.pre_load", "flaky/sub.pre_load", "flaky/sub.post_load", "flaky.post_load"],
        ),
    ],
)
def test_a_failing_load_hook_fails_the_load_naming_vmsd_and_hook(failing, calls):
    """QEMU's vmstate_load_state: a failing pre_load or post_load fails the load at once."""
    state = FLAKY_VMSD.save(Flaky(x=4))
    device = Flaky()
    device.failing.add(failing)
    vmsd_name, hook_name = failing.split(".")

    with pytest.raises(LoadHookError) as caught:
        FLAKY_VMSD.load(device, state, 1)

    assert f"{vmsd_name}: {hook_name} hook failed: {failing} refused by the backend" == str(
        caught.value
    )
    assert (vmsd_name, hook_name, None) == (
        caught.value.device,
        caught.value.hook,
        caught.value.field,
    )
    assert calls == device.calls


def full_section_of(device):
    return SectionFull(
        section_id=1,
        idstr="flaky",
        instance_id=0,
        version_id=1,
        state=FLAKY_VMSD.save(device),
    )


def test_a_failing_post_load_fails_load_section_full_with_qemus_prefix():
    """The load error is a VMStateError (the daemon fails the load with it) naming the device,
    the instance and the hook."""
    registry, _ = registry_with(FLAKY_VMSD, Flaky())
    registry.find("flaky", 0).opaque.failing.add("flaky.post_load")

    with pytest.raises(VMStateError) as caught:
        load_section_full(registry, full_section_of(Flaky(x=8)))

    assert isinstance(caught.value, LoadHookError)
    assert (
        "error while loading state for instance 0x0 of device 'flaky': post_load hook failed:"
        " flaky.post_load refused by the backend"
    ) == str(caught.value)
    assert ("flaky", "post_load") == (caught.value.device, caught.value.hook)


def test_a_failing_subsection_pre_load_names_the_subsection_after_the_prefix():
    """A subsection's failure keeps the subsection's name after the device prefix."""
    registry, _ = registry_with(FLAKY_VMSD, Flaky())
    registry.find("flaky", 0).opaque.failing.add("flaky/sub.pre_load")

    with pytest.raises(LoadHookError) as caught:
        load_section_full(registry, full_section_of(Flaky(x=8)))

    assert (
        "error while loading state for instance 0x0 of device 'flaky': flaky/sub: pre_load hook"
        " failed: flaky/sub.pre_load refused by the backend"
    ) == str(caught.value)


# --------------------------------------------------------------------------- change-state handlers


def recorder(log, name, *, fail_on_stop=False):
    """A change-state callback that logs its calls and fails (HookError) on a stop if asked."""

    def callback(running, state):
        log.append((name, running, str(state)))
        if fail_on_stop and not running:
            raise HookError(f"{name}: backend disconnected")

    return callback


def test_notify_runs_every_handler_and_returns_the_failures_on_a_stop():
    """QEMU's vm_state_notify: every handler runs even if some fail; the results are OR'ed."""
    runstate = RunStateMachine(RunState.RUNNING)
    log = []
    for name, priority, failing in [("a", 0, True), ("b", 1, False), ("c", 2, True)]:
        runstate.add_change_state_handler(
            recorder(log, name, fail_on_stop=failing),
            priority=priority,
            prepare=recorder(log, f"prep-{name}"),
            name=name,
        )

    failures = runstate.notify(running=False, state=RunState.PAUSED)

    assert [("c", "c: backend disconnected"), ("a", "a: backend disconnected")] == [
        (name, str(error)) for name, error in failures
    ]
    order = ["c", "b", "a"]
    assert [(f"prep-{n}", False, "paused") for n in order] + [
        (n, False, "paused") for n in order
    ] == log


def its_table_in_ram(machine):
    """The ITS table region of guest RAM, as the words the ITS stop handler writes."""
    start = machine.layout.its_table_address // 8
    return machine.ram.words[start : start + 2 + N_EVENTS].tolist()


def its_table_from_cache(machine):
    return [TABLE_MAGIC, N_EVENTS, *machine.its.cache.tolist()]


def test_a_failing_handler_fails_the_stop_but_the_vm_is_stopped_and_can_start_again():
    """do_vm_stop returns the handlers' error after it stopped the VM: the run state is the
    requested one, the other handlers (here the ITS, which runs after the failing one on a stop)
    did their work, and vm_start works."""
    machine = Machine.boot(CONFIG)
    log = []
    machine.runstate.add_change_state_handler(
        recorder(log, "vhost", fail_on_stop=True), priority=1, name="vhost"
    )
    machine.runstate.add_change_state_handler(recorder(log, "last"), priority=-1, name="last")
    machine.vm_start()
    machine.run(TICKS_BEFORE)

    with pytest.raises(ChangeStateError) as caught:
        machine.vm_stop(RunState.PAUSED)

    assert (
        "stopping the VM ('running' -> 'paused'): change-state handler 'vhost' failed:"
        " vhost: backend disconnected"
    ) == str(caught.value)
    assert ("running", "paused") == (caught.value.from_state, caught.value.to_state)
    assert RunState.PAUSED == machine.runstate.state
    assert ("last", False, "paused") == log[-1]
    assert its_table_from_cache(machine) == its_table_in_ram(machine)
    machine.vm_start()
    assert machine.is_running


def test_a_failing_handler_at_stop_for_migration_lets_the_source_resume_like_the_replay():
    """migration_completion fails when the stop fails, and the source restarts the VM. The
    globalstate keeps the state before the stop, the error says it too, and the digest after N
    ticks is the replay's. With the handler well again, the VM migrates."""
    source = Machine.boot(CONFIG)
    log = []
    handle = source.runstate.add_change_state_handler(
        recorder(log, "vhost", fail_on_stop=True), priority=1, name="vhost"
    )
    source.vm_start()
    source.run(TICKS_BEFORE)
    state_setup(source.savevm)
    while state_iterate(source.savevm, 64) is not None:
        source.run(2)

    with pytest.raises(ChangeStateError) as caught:
        source.stop_for_migration()

    assert RunState.RUNNING == caught.value.from_state
    assert RunState.FINISH_MIGRATE == source.runstate.state
    assert RunState.RUNNING == source.globalstate.stored_runstate()
    assert its_table_from_cache(source) == its_table_in_ram(source)
    state_cleanup(source.savevm)
    source.vm_start()
    source.run(TICKS_AFTER)
    handle.remove()
    source.vm_stop()
    assert replay(CONFIG, source.ticks) == source.digest()

    source.vm_start()
    destination = migrate_in_memory(source, ticks_per_batch=1)
    assert RunState.RUNNING == destination.migrated_runstate()
    destination.vm_start()
    destination.run(TICKS_AFTER)
    destination.vm_stop()
    assert replay(CONFIG, destination.ticks) == destination.digest()


def test_a_handler_failing_on_start_does_not_stop_the_start():
    """QEMU's vm_state_notify ignores the handlers' results on a start: the VM runs."""
    machine = Machine.boot(CONFIG)
    log = []

    def fail_on_start(running, state):
        log.append(("flaky", running))
        if running:
            raise HookError("flaky: not now")

    machine.runstate.add_change_state_handler(fail_on_start, name="flaky")
    machine.runstate.add_change_state_handler(recorder(log, "after"), priority=1)
    machine.vm_start()

    assert machine.is_running
    assert [("flaky", True), ("after", True, "running")] == log


def test_a_handler_without_a_name_is_named_after_its_callback():
    """The default name is the callback's qualified name, e.g. the ITS's bound method."""
    runstate = RunStateMachine(RunState.RUNNING)

    def backend(running, state):
        raise HookError("gone")

    runstate.add_change_state_handler(backend)

    assert ["test_a_handler_without_a_name_is_named_after_its_callback.<locals>.backend"] == [
        name for name, _ in runstate.notify(running=False, state=RunState.PAUSED)
    ]
