"""A machine running in real time: vCPU pacing, run-state events, serial output.

The machine (`vmsim.Machine`) only counts ticks; here they are paced to the machine's `tick_hz`
against the event loop's clock, slowed down by auto-converge and dirty limits (`vmm.pacing`).
The vCPU runs in short slices (a few milliseconds of work at most), on a thread of its own
(`vmm.vcpu_thread`: the VM's lock makes every dirty-log sync, batch and run-state change atomic
with respect to it) or, with ``vcpu_thread=False`` and for a postcopy destination's guest (which
stops at every missing page and asks the loop for it), on the event loop between its other
callbacks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from vmm.blocktime import Blocktime
from vmm.pacing import Pacer
from vmm.vcpu_thread import VcpuLock, VcpuThread
from vmm.wakeup import Wakeup
from vmsim import Machine, RunState

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import numpy as np
    from numpy.typing import NDArray

SLICE_BUDGET_S: Final = 0.002  # target CPU time of one vCPU slice
RATE_WINDOW_S: Final = 1.0  # the measured tick rate covers the last second
# Do not wake up more often than this when ahead of time: a 1000 Hz guest then runs ~5 ticks a
# wake-up, and an idle VM costs its daemon 0.06-0.07 of a core instead of 0.10-0.11 at 2 ms.
MIN_SLEEP_S: Final = 0.005
MAX_SLEEP_S: Final = 0.05  # a throttled vCPU still looks at its limits this often
POSTCOPY_SLICE_TICKS: Final = 1
"""In postcopy a slice waits for every page it touches, so the vCPUs run one tick at a time:
like a real vCPU they stop at the first missing page, and do not ask for a whole sweep of RAM
before running again (a 50-tick slice of the busy ab guest touched all of it: one 400 ms block)."""

log = structlog.get_logger("vmm.vm")


class EventSink(Protocol):
    """Where QMP events go (the QMP server's `emit_event`)."""

    def __call__(self, name: str, data: Mapping[str, object] | None = None) -> None:
        """Emit one event."""


class VirtualMachine:
    """A `vmsim.Machine` executed in real time, its vCPU on a thread of its own or on the loop.

    `lock` is what the event loop's thread holds while it touches the machine (`vmm.vcpu_thread`);
    the VM's own methods take it.
    """

    def __init__(
        self,
        machine: Machine,
        *,
        emit_event: EventSink,
        clock: Callable[[], float],
        serial_sink: Callable[[bytes], None] | None = None,
        lock: VcpuLock | None = None,
        vcpu_thread: bool = True,
    ) -> None:
        self.machine = machine
        self.lock = lock if lock is not None else VcpuLock()
        self._vcpu = VcpuThread(self.lock, self._thread_step) if vcpu_thread else None
        self._emit_event = emit_event
        self._clock = clock
        self._serial_sink = serial_sink
        self._wakeup = Wakeup()
        self.pacer = Pacer(
            tick_hz=machine.config.tick_hz,
            writes_per_s=[p.writes_per_s for p in machine.layout.partitions],
            now=clock(),
            ticks=machine.ticks,
        )
        if machine.is_running:
            self.pacer.started(now=clock(), ticks=machine.ticks)
        self._slice_ticks = 1
        self._rate_samples: deque[tuple[float, int]] = deque()
        self.on_page_fault: Callable[[NDArray[np.intp]], None] | None = None
        self.blocktime = Blocktime()

    @property
    def runstate(self) -> RunState:
        """The machine's run state."""
        return self.machine.runstate.state

    @property
    def lost_ticks(self) -> int:
        """Ticks dropped because the host could not keep up (steal time)."""
        return self.pacer.lost_ticks

    def throttled_ticks(self) -> int:
        """Ticks lost to auto-converge and dirty limits: the work throttling cost the guest."""
        return self.pacer.throttled_ticks(now=self._clock())

    def set_cpu_throttle(self, percent: int) -> None:
        """Auto-converge: the vCPUs sleep `percent` % of the time (0 lifts it)."""
        with self.lock:
            self.pacer.set_cpu_throttle(percent, now=self._clock(), ticks=self.machine.ticks)
        self._kick()

    def set_migration_dirty_limit(self, limit_mib_per_s: int | None) -> None:
        """The migration's dirty-limit throttle on every vCPU (None lifts it)."""
        with self.lock:
            ticks = self.machine.ticks
            self.pacer.set_migration_limit(limit_mib_per_s, now=self._clock(), ticks=ticks)
        self._kick()

    def set_vcpu_dirty_limit(self, cpu_index: int | None, limit_mib_per_s: int | None) -> None:
        """`set-vcpu-dirty-limit` / `cancel-vcpu-dirty-limit` (cpu_index None: every vCPU)."""
        with self.lock:
            self.pacer.set_vcpu_limit(
                cpu_index, limit_mib_per_s, now=self._clock(), ticks=self.machine.ticks
            )
        self._kick()

    def _kick(self) -> None:
        """What the vCPU waits for changed: it looks again now, wherever it runs."""
        self._wakeup.set()
        if self._vcpu is not None:
            self._vcpu.kick()

    @property
    def is_running(self) -> bool:
        """Whether the vCPUs execute (run state `running`)."""
        return self.machine.is_running

    def start(self) -> None:
        """QEMU `vm_start`: run the machine (handlers forward), emit RESUME."""
        with self.lock:
            self.machine.vm_start()
            self.pacer.started(now=self._clock(), ticks=self.machine.ticks)
            self._rate_samples.clear()
        self._emit_event("RESUME")
        self._kick()

    def stop(self, state: RunState = RunState.PAUSED) -> None:
        """QEMU `vm_stop`: stop the machine (handlers in reverse), emit STOP if it was running.

        Raises:
            ChangeStateError: a change-state handler failed; the VM is stopped all the same
                (and STOP was emitted), as in QEMU.
        """
        with self.lock:
            was_running = self.is_running
            try:
                self.machine.vm_stop(state)
            finally:
                self._after_stop(was_running=was_running)

    def stop_for_migration(self) -> RunState:
        """QEMU `migration_stop_vm`: store the run state, stop to finish-migrate.

        Raises:
            ChangeStateError: a change-state handler failed (the VM is stopped; its previous
                run state is the error's `from_state`).
        """
        with self.lock:
            was_running = self.is_running
            try:
                return self.machine.stop_for_migration()
            finally:
                self._after_stop(was_running=was_running)

    def _after_stop(self, *, was_running: bool) -> None:
        if was_running and not self.is_running:
            self.pacer.stopped(now=self._clock(), ticks=self.machine.ticks)
            self._emit_event("STOP")

    async def run(self) -> None:
        """Execute ticks for ever, at `tick_hz` of real time, whenever the machine runs."""
        try:
            await self._run()
        finally:
            if self._vcpu is not None:
                self._vcpu.close()

    async def _run(self) -> None:
        while True:
            if not self.is_running:
                self._wakeup.clear()
                await self._wakeup.sleep(None)
                continue
            if self._vcpu is not None and self.machine.postcopy is None:
                self.blocktime.unblock(self._clock())  # a postcopy that just ended: its last block
                await self._vcpu.run_until_parked()  # until it stops, or a postcopy begins
                continue
            if self._waits_for_pages():
                await self._sleep(MAX_SLEEP_S)  # `wake` ends it as soon as pages arrive
                continue
            now, ticks = self._clock(), self.machine.ticks
            due = self.pacer.due_ticks(now=now, ticks=ticks)
            if due <= 0:
                wait_s = self.pacer.wait_s(now=now, ticks=ticks)
                await self._sleep(min(max(wait_s, MIN_SLEEP_S), MAX_SLEEP_S))
                continue
            limit = POSTCOPY_SLICE_TICKS if self.machine.postcopy is not None else self._slice_ticks
            self._emit_serial(self._run_slice(min(due, limit), self._clock))
            await asyncio.sleep(0)

    def _thread_step(self) -> float | None:
        """The vCPU thread's look, under the lock: 0 after a slice, or seconds to sleep.

        None parks the thread: the VM stopped, or it is a postcopy destination's guest (which
        stops at every missing page and asks the loop for it, so it runs on the loop).
        """
        machine = self.machine
        if not machine.is_running or machine.postcopy is not None:
            return None
        now, ticks = time.monotonic(), machine.ticks  # the loop's clock (uvloop's, in ms)
        due = self.pacer.due_ticks(now=now, ticks=ticks)
        if due <= 0:
            return min(max(self.pacer.wait_s(now=now, ticks=ticks), MIN_SLEEP_S), MAX_SLEEP_S)
        output = self._run_slice(min(due, self._slice_ticks), time.monotonic)
        if output and self._vcpu is not None:
            self._vcpu.post(self._emit_serial, output)
        return 0.0

    def wake(self) -> None:
        """Postcopy: pages arrived; vCPUs blocked on missing pages look again."""
        self._wakeup.set()

    def _waits_for_pages(self) -> bool:
        """Postcopy: whether the vCPUs wait for pages (asked for again on every look)."""
        machine = self.machine
        postcopy = machine.postcopy
        if postcopy is None or not postcopy.blocked or machine.postcopy_unblock():
            self.blocktime.unblock(self._clock())
            return False
        self.blocktime.block(self._clock())
        if self.on_page_fault is not None:
            self.on_page_fault(postcopy.waiting_for())
        return True

    async def _sleep(self, delay_s: float) -> None:
        """Sleep, or less if a limit changes (a throttled vCPU may sleep long)."""
        self._wakeup.clear()
        await self._wakeup.sleep(delay_s)

    def ticks_per_second(self) -> float:
        """Ticks the vCPUs actually executed per second over the last second (0 when stopped)."""
        if not self.is_running or len(self._rate_samples) < 2:  # noqa: PLR2004 - two points
            return 0.0
        (first_at, first_ticks), (last_at, last_ticks) = (
            self._rate_samples[0],
            self._rate_samples[-1],
        )
        return (last_ticks - first_ticks) / (last_at - first_at) if last_at > first_at else 0.0

    def page_writes_per_second(self) -> float:
        """The guest's measured write rate: executed ticks/s x configured writes per tick."""
        config = self.machine.config
        return self.ticks_per_second() * config.dirty_rate / config.tick_hz

    def _run_slice(self, n_ticks: int, clock: Callable[[], float]) -> bytes:
        """Run `n_ticks`; the serial output they printed."""
        started_at = clock()
        self.machine.run(n_ticks)
        spent_s = clock() - started_at
        self._sample_rate(started_at + spent_s)
        self._adapt_slice(n_ticks, spent_s)
        return self.machine.take_serial_output()

    def _emit_serial(self, output: bytes) -> None:
        if output and self._serial_sink is not None:
            self._serial_sink(output)

    def _sample_rate(self, now: float) -> None:
        samples = self._rate_samples
        samples.append((now, self.machine.ticks))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW_S:  # noqa: PLR2004
            samples.popleft()

    def _adapt_slice(self, n_ticks: int, spent_s: float) -> None:
        per_tick_s = spent_s / n_ticks if spent_s > 0 else SLICE_BUDGET_S / 1000
        target = int(SLICE_BUDGET_S / per_tick_s) if per_tick_s > 0 else self._slice_ticks * 2
        # Move halfway towards the target so one noisy slice does not swing it.
        self._slice_ticks = max(1, (self._slice_ticks + max(1, target)) // 2)
