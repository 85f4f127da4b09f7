"""The vCPU thread: the lock's priority to the event loop, parking, and a VM run on the thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING

import pytest

from vmm.vcpu_thread import VcpuLock, VcpuThread
from vmm.vm import VirtualMachine
from vmsim import Machine, MachineConfig, RunState, WorkloadKind, replay

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WAIT_S = 5.0


def test_the_loop_is_served_before_the_vcpu_starts_another_slice() -> None:
    lock = VcpuLock()
    order: list[str] = []
    in_slice, finish_slice = threading.Event(), threading.Event()

    def vcpu() -> None:
        with lock.for_vcpu():
            in_slice.set()
            finish_slice.wait(WAIT_S)
            order.append("slice 1")
        with lock.for_vcpu():
            order.append("slice 2")

    thread = threading.Thread(target=vcpu)
    thread.start()
    assert in_slice.wait(WAIT_S)
    threading.Timer(0.05, finish_slice.set).start()
    with lock:  # waits for slice 1 to end; slice 2 waits for this
        order.append("loop")
        time.sleep(0.05)  # slice 2 would start here if the vCPU went first
    thread.join(WAIT_S)

    assert order == ["slice 1", "loop", "slice 2"]


def test_released_lets_the_vcpu_run_inside_nested_holds_and_takes_them_back() -> None:
    lock = VcpuLock()
    ran = [threading.Event(), threading.Event()]

    def vcpu(index: int) -> None:
        with lock.for_vcpu():
            ran[index].set()

    with lock, lock:
        first = threading.Thread(target=vcpu, args=(0,))
        first.start()
        assert not ran[0].wait(0.05)  # held: no slice
        with lock.released():
            assert ran[0].wait(WAIT_S)
        second = threading.Thread(target=vcpu, args=(1,))
        second.start()
        assert not ran[1].wait(0.05)  # both holds are back
    assert ran[1].wait(WAIT_S)  # and both were given back on leaving
    first.join(WAIT_S)
    second.join(WAIT_S)


async def test_the_thread_steps_until_it_parks_then_waits_to_be_run_again() -> None:
    threads: list[str] = []
    park_after = [3]

    def step() -> float | None:
        threads.append(threading.current_thread().name)
        return 0.0 if len(threads) % park_after[0] else None

    vcpu = VcpuThread(VcpuLock(), step)
    await vcpu.run_until_parked()
    await asyncio.sleep(0.05)
    assert threads == ["vcpu"] * 3  # parked: no look until it is run again

    await vcpu.run_until_parked()
    vcpu.close()

    assert threads == ["vcpu"] * 6


async def test_a_kick_ends_a_sleep_for_pacing() -> None:
    looks: list[float] = []

    def step() -> float | None:
        looks.append(time.monotonic())
        return 30.0 if len(looks) == 1 else None

    vcpu = VcpuThread(VcpuLock(), step)
    asyncio.get_running_loop().call_later(0.05, vcpu.kick)
    await asyncio.wait_for(vcpu.run_until_parked(), WAIT_S)
    vcpu.close()

    assert len(looks) == 2
    assert looks[1] - looks[0] < WAIT_S


async def test_an_exception_of_a_step_is_raised_on_the_loop() -> None:
    def step() -> float | None:
        raise ZeroDivisionError

    vcpu = VcpuThread(VcpuLock(), step)
    with pytest.raises(ZeroDivisionError):
        await vcpu.run_until_parked()
    vcpu.close()


async def test_cancelling_the_run_stops_the_thread() -> None:
    vcpu = VcpuThread(VcpuLock(), lambda: 0.001)
    task = asyncio.create_task(vcpu.run_until_parked())
    await asyncio.sleep(0.05)
    thread = next(t for t in threading.enumerate() if t.name == "vcpu")

    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    assert not thread.is_alive()


# -- a VirtualMachine on the thread -----------------------------------------------------------

CONFIG = MachineConfig(ram_mib=4, workload=WorkloadKind.AB, dirty_rate=20_000, tick_hz=1000)


def _vm(*, vcpu_thread: bool) -> tuple[VirtualMachine, list[str], list[str]]:
    machine = Machine.boot(CONFIG)
    events: list[str] = []
    ran_on: list[str] = []
    run = machine.run

    def run_and_note(n_ticks: int) -> None:
        ran_on.append(threading.current_thread().name)
        run(n_ticks)

    machine.run = run_and_note  # type: ignore[method-assign]
    vm = VirtualMachine(
        machine,
        emit_event=lambda name, data=None: events.append(name),
        clock=asyncio.get_running_loop().time,
        vcpu_thread=vcpu_thread,
    )
    return vm, events, ran_on


@contextlib.asynccontextmanager
async def _running(vm: VirtualMachine, *, for_s: float) -> AsyncIterator[None]:
    """The VM's run task, the VM started and left running `for_s`; the task ends on leaving."""
    task = asyncio.create_task(vm.run())
    vm.start()
    await asyncio.sleep(for_s)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("vcpu_thread", [True, False])
async def test_the_vm_runs_in_real_time_and_stops_dead_between_slices(vcpu_thread: bool) -> None:
    vm, events, ran_on = _vm(vcpu_thread=vcpu_thread)
    async with _running(vm, for_s=0.3):
        vm.stop()
        ticks = vm.machine.ticks
        await asyncio.sleep(0.05)

    assert ticks > 100  # 1000 Hz for 0.3 s, less what the machine's host could not keep up
    assert vm.machine.ticks == ticks  # nothing ran after the stop returned
    assert set(ran_on) == {"vcpu" if vcpu_thread else threading.current_thread().name}
    assert events == ["RESUME", "STOP"]
    assert vm.machine.digest() == replay(CONFIG, ticks)
    assert vm.runstate is RunState.PAUSED


async def test_the_thread_picks_up_again_after_cont() -> None:
    vm, _, ran_on = _vm(vcpu_thread=True)
    async with _running(vm, for_s=0.1):
        vm.stop()
        first = vm.machine.ticks
        vm.start()
        await asyncio.sleep(0.1)
        with vm.lock:  # as the migration engine: between slices
            second = vm.machine.ticks
            time.sleep(0.05)  # noqa: ASYNC251 - the loop busy, as with the engine's work
            assert vm.machine.ticks == second
        vm.stop()

    assert 0 < first < second
    assert set(ran_on) == {"vcpu"}
    assert vm.machine.digest() == replay(CONFIG, vm.machine.ticks)
