"""A machine running in real time: vCPU pacing, run-state events, serial output.

The machine (`vmsim.Machine`) only counts ticks; here they are paced to the machine's `tick_hz`
against the event loop's clock. The vCPU runs in short slices (a few milliseconds of work at most)
and yields between them, so migration I/O and QMP run in between on the same thread. That also
makes every dirty-log sync atomic with respect to the vCPU: no guest write can happen while one
runs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from vmsim import Machine, RunState

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

SLICE_BUDGET_S: Final = 0.002  # target CPU time of one vCPU slice
RATE_WINDOW_S: Final = 1.0  # the measured tick rate covers the last second
MIN_SLEEP_S: Final = 0.002  # do not wake up more often than this when ahead of time
MAX_LAG_S: Final = 0.1  # beyond this much backlog the vCPU drops time (steal) instead of racing

log = structlog.get_logger("vmm.vm")


class EventSink(Protocol):
    """Where QMP events go (the QMP server's `emit_event`)."""

    def __call__(self, name: str, data: Mapping[str, object] | None = None) -> None:
        """Emit one event."""


class VirtualMachine:
    """A `vmsim.Machine` executed in real time on the running event loop."""

    def __init__(
        self,
        machine: Machine,
        *,
        emit_event: EventSink,
        clock: Callable[[], float],
        serial_sink: Callable[[bytes], None] | None = None,
    ) -> None:
        self.machine = machine
        self._emit_event = emit_event
        self._clock = clock
        self._serial_sink = serial_sink
        self._wakeup = asyncio.Event()
        self._anchor_at = clock()
        self._anchor_ticks = machine.ticks
        self._slice_ticks = 1
        self.lost_ticks = 0
        self._rate_samples: deque[tuple[float, int]] = deque()

    @property
    def runstate(self) -> RunState:
        """The machine's run state."""
        return self.machine.runstate.state

    @property
    def is_running(self) -> bool:
        """Whether the vCPUs execute (run state `running`)."""
        return self.machine.is_running

    def start(self) -> None:
        """QEMU `vm_start`: run the machine (handlers forward), emit RESUME."""
        self.machine.vm_start()
        self._reanchor()
        self._emit_event("RESUME")
        self._wakeup.set()

    def stop(self, state: RunState = RunState.PAUSED) -> None:
        """QEMU `vm_stop`: stop the machine (handlers in reverse), emit STOP if it was running.

        Raises:
            ChangeStateError: a change-state handler failed; the VM is stopped all the same
                (and STOP was emitted), as in QEMU.
        """
        was_running = self.is_running
        try:
            self.machine.vm_stop(state)
        finally:
            if was_running and not self.is_running:
                self._emit_event("STOP")

    def stop_for_migration(self) -> RunState:
        """QEMU `migration_stop_vm`: store the run state, stop to finish-migrate.

        Raises:
            ChangeStateError: a change-state handler failed (the VM is stopped; its previous
                run state is the error's `from_state`).
        """
        was_running = self.is_running
        try:
            return self.machine.stop_for_migration()
        finally:
            if was_running and not self.is_running:
                self._emit_event("STOP")

    async def run(self) -> None:
        """Execute ticks for ever, at `tick_hz` of real time, whenever the machine runs."""
        while True:
            if not self.is_running:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            due = self._due_ticks(self._clock())
            if due <= 0:
                await asyncio.sleep(MIN_SLEEP_S)
                continue
            self._run_slice(min(due, self._slice_ticks))
            await asyncio.sleep(0)

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

    def _run_slice(self, n_ticks: int) -> None:
        started_at = self._clock()
        self.machine.run(n_ticks)
        spent_s = self._clock() - started_at
        self._sample_rate(started_at + spent_s)
        self._adapt_slice(n_ticks, spent_s)
        output = self.machine.take_serial_output()
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

    def _due_ticks(self, now: float) -> int:
        hz = self.machine.config.tick_hz
        target = self._anchor_ticks + int((now - self._anchor_at) * hz)
        due = target - self.machine.ticks
        max_lag_ticks = max(1, int(MAX_LAG_S * hz))
        if due > max_lag_ticks:
            # The loop was busy for too long (or the process was stopped): keep real-time pacing
            # from here on rather than racing through the backlog; report the lost time.
            self.lost_ticks += due - max_lag_ticks
            self._anchor_at = now
            self._anchor_ticks = self.machine.ticks + max_lag_ticks
            due = max_lag_ticks
        return due

    def _reanchor(self) -> None:
        self._anchor_at = self._clock()
        self._anchor_ticks = self.machine.ticks
        self._rate_samples.clear()
