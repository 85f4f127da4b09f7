"""The guest program: what the machine does in each tick, executed span by span.

Semantics of one tick t (the clock reads t before it, t + 1 after it):

1. The timer advances to t + 1; if it reached its deadline it interrupts one vCPU.
2. Each vCPU in order handles its events due at t: a pending timer interrupt (the handler
   writes to the address the ITS maps, re-arms the timer), a 'B' of the ab guest, and its
   periodic device accesses (a UART byte, an ITS MAPTI command, a vector unit switch).
3. Each vCPU in order does its workload's page writes of tick t.
4. The UART line drains (one byte every DRAIN_PERIOD_TICKS).

Events happen only at ticks that can be computed in advance (the timer deadline, fixed
periods, the ab sweep count), and between two event ticks the registers the writes depend on
do not change. So `run` handles the events of the first tick of a span and then applies the
page writes of the whole span at once, vectorised; since vCPUs write disjoint partitions and
all randomness is counter-based, any slicing of the ticks into spans gives the same state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from vmsim.config import PAGE_SIZE
from vmsim.devices.cpu import CODE_BASE, MIE_MTIE, MIP_MTIP, MSTATUS_MIE
from vmsim.devices.its import N_EVENTS
from vmsim.prng import U64_MASK, draw, draws, mix64, stream_key
from vmsim.ram import WORDS_PER_PAGE
from vmsim.workload import AB_B_COUNT_REG, AbWorkload, make_workload

if TYPE_CHECKING:
    from vmsim.config import MachineConfig
    from vmsim.devices.cpu import VCpu
    from vmsim.devices.its import Its
    from vmsim.devices.serial import Serial
    from vmsim.devices.timer import Timer
    from vmsim.layout import MachineLayout
    from vmsim.ram import GuestRam
    from vmsim.workload import Workload

__all__ = ["Guest"]

SERIAL_PERIOD_TICKS: Final = 64
ITS_PERIOD_TICKS: Final = 128
VECTOR_PERIOD_TICKS: Final = 1024
TIMER_SPAN_TICKS: Final = 128
_PHASE_STRIDE_TICKS: Final = 13
_MAX_SPAN_WRITES: Final = 1 << 16
_STACK_TOP: Final = 0x8010_0000
_STACK_BYTES_PER_VCPU: Final = 0x1000
_LANE_EVENT: Final = 0x45564E54
_LANE_BOOT: Final = 0x424F4F54
_TAG_IRQ: Final = 0x1
_TAG_SERIAL: Final = 0x2
_TAG_ITS: Final = 0x3
_TAG_VECTOR: Final = 0x4
_TAG_VALUE: Final = 0x5
_PRINTABLE_FIRST: Final = 0x20
_PRINTABLE_COUNT: Final = 95


class Guest:
    """Executes ticks on a machine's RAM, vCPUs and devices."""

    def __init__(
        self,
        config: MachineConfig,
        layout: MachineLayout,
        ram: GuestRam,
        cpus: list[VCpu],
        devices: tuple[Timer, Serial, Its],
    ) -> None:
        self._config = config
        self._layout = layout
        self._ram = ram
        self._cpus = cpus
        self._timer, self._serial, self._its = devices
        self._workloads: list[Workload] = [
            make_workload(ram, partition, config, index)
            for index, partition in enumerate(layout.partitions)
        ]
        self._event_keys = [stream_key(config.seed, i, _LANE_EVENT) for i in range(len(cpus))]
        self._rates = [partition.writes_per_s for partition in layout.partitions]
        total_rate = max(sum(self._rates), 1)
        self._max_span_ticks = max(1, _MAX_SPAN_WRITES * config.tick_hz // total_rate)

    # ------------------------------------------------------------------ boot

    def boot(self) -> None:
        """Bring the guest up: registers, first timer deadline, ITS tables, ab range, 'A'."""
        key = stream_key(self._config.seed, _LANE_BOOT)
        for cpu in self._cpus:
            cpu.pc = CODE_BASE
            cpu.mstatus = MSTATUS_MIE
            cpu.mie = MIE_MTIE
            cpu.gprs[2] = _STACK_TOP - cpu.index * _STACK_BYTES_PER_VCPU
            cpu.gprs[8:] = draws(key, 64 * cpu.index, 24)
            cpu.fprs[:] = draws(key, 64 * cpu.index + 24, 32)
        self._timer.deadline_ticks = 1 + draw(key, 1 << 20) % TIMER_SPAN_TICKS
        for event_id in range(N_EVENTS):
            self._its.map_event(event_id, self._target_address(draw(key, (1 << 21) + event_id)))
        self._its.save_tables()
        if any(isinstance(w, AbWorkload) for w in self._workloads):
            for workload in self._workloads:
                if isinstance(workload, AbWorkload):
                    workload.boot()
            self._serial.transmit(ord("A"))

    # ------------------------------------------------------------------ run

    def run(self, n_ticks: int) -> None:
        """Execute n_ticks ticks."""
        timer = self._timer
        end = timer.clock_ticks + n_ticks
        while timer.clock_ticks < end:
            tick = timer.clock_ticks
            self._start_tick(tick)
            span_end = min(self._next_event_tick(tick + 1), end)
            self._write_span(tick, span_end)
            timer.clock_ticks = span_end
        self._serial.catch_up(timer.clock_ticks)

    def _start_tick(self, tick: int) -> None:
        """Steps 1 and 2 of a tick: the timer, then each vCPU's events."""
        timer = self._timer
        timer.clock_ticks = tick + 1
        if timer.deadline_ticks <= timer.clock_ticks:
            self._cpus[timer.expire(len(self._cpus))].mip |= MIP_MTIP
        self._serial.catch_up(tick)
        for cpu, workload in zip(self._cpus, self._workloads, strict=True):
            if cpu.mip & cpu.mie & MIP_MTIP:
                self._handle_timer_interrupt(cpu)
            if workload.writes_until_b(cpu) == 0:
                self._print_bs(cpu, workload)
            phase = tick + cpu.index * _PHASE_STRIDE_TICKS
            if phase % SERIAL_PERIOD_TICKS == 0:
                self._write_serial(cpu)
            if (phase + 1) % ITS_PERIOD_TICKS == 0:
                self._issue_its_command(cpu)
            if (phase + 2) % VECTOR_PERIOD_TICKS == 0:
                self._switch_vector_unit(cpu)

    def _next_event_tick(self, after: int) -> int:
        """The first tick >= after at which step 1 or 2 has something to do (capped)."""
        best = after + self._max_span_ticks - 1
        if self._timer.armed:
            best = min(best, max(after, self._timer.deadline_ticks - 1))
        for cpu, workload, rate in zip(self._cpus, self._workloads, self._rates, strict=True):
            phase = after + cpu.index * _PHASE_STRIDE_TICKS
            best = min(
                best,
                after + (-phase) % SERIAL_PERIOD_TICKS,
                after + (-phase - 1) % ITS_PERIOD_TICKS,
                after + (-phase - 2) % VECTOR_PERIOD_TICKS,
            )
            needed = workload.writes_until_b(cpu)
            if needed is not None and rate:
                # The tick whose start sees the writes done: the smallest T with
                # writes(T) >= writes(after - 1) + needed, where writes(T) = T * rate // hz.
                hz = self._config.tick_hz
                target = self._writes_before(after - 1, rate) + needed
                best = min(best, max(after, -(-target * hz // rate)))
        return best

    def _writes_before(self, tick: int, rate: int) -> int:
        """Writes a vCPU of this rate did in ticks 0 .. tick - 1 (exact integer accumulation)."""
        return tick * rate // self._config.tick_hz

    def _write_span(self, first_tick: int, end_tick: int) -> None:
        """Step 3 for ticks first_tick .. end_tick - 1, one vectorised batch per vCPU."""
        for cpu, workload, rate in zip(self._cpus, self._workloads, self._rates, strict=True):
            n_writes = self._writes_before(end_tick, rate) - self._writes_before(first_tick, rate)
            if n_writes == 0:
                continue
            # The register file is constant between events, so one key serves the whole span.
            workload.write(cpu, n_writes, cpu.fold())
            cpu.prng_counter = (cpu.prng_counter + n_writes) & U64_MASK
            cpu.instret = (cpu.instret + n_writes) & U64_MASK
            cpu.advance_pc(n_writes)

    # ------------------------------------------------------------------ events

    def _event(self, cpu: VCpu, tag: int) -> int:
        """Run one event's instructions: draw, hash with the registers, retire into them."""
        drawn = draw(self._event_keys[cpu.index], cpu.prng_counter)
        cpu.prng_counter = (cpu.prng_counter + 1) & U64_MASK
        value = mix64(cpu.fold() ^ drawn ^ tag ^ cpu.pc ^ mix64(cpu.instret))
        cpu.retire_event(value)
        return value

    def _handle_timer_interrupt(self, cpu: VCpu) -> None:
        value = self._event(cpu, _TAG_IRQ)
        target = self._its.translate(value % N_EVENTS)
        if target is not None:
            self._ram.write_word(target // 8, mix64(value ^ _TAG_VALUE))
        cpu.mip &= ~MIP_MTIP
        cpu.mscratch = (cpu.mscratch + 1) & U64_MASK
        timer = self._timer
        timer.deadline_ticks = timer.clock_ticks + 1 + (value >> 32) % TIMER_SPAN_TICKS

    def _print_bs(self, cpu: VCpu, workload: Workload) -> None:
        while workload.writes_until_b(cpu) == 0:
            self._serial.transmit(ord("B"))
            cpu.gprs[AB_B_COUNT_REG] = int(cpu.gprs[AB_B_COUNT_REG]) + 1

    def _write_serial(self, cpu: VCpu) -> None:
        value = self._event(cpu, _TAG_SERIAL)
        self._serial.transmit(_PRINTABLE_FIRST + value % _PRINTABLE_COUNT)

    def _issue_its_command(self, cpu: VCpu) -> None:
        value = self._event(cpu, _TAG_ITS)
        self._its.map_event(value % N_EVENTS, self._target_address(value >> 8))

    def _switch_vector_unit(self, cpu: VCpu) -> None:
        value = self._event(cpu, _TAG_VECTOR)
        on = bool((value >> 3) & 1)
        if on != cpu.vector_on:
            cpu.set_vector_unit(on=on)

    def _target_address(self, value: int) -> int:
        """An 8-aligned address in the working set, never in a page's first 8 bytes.

        The ab guest's byte 0 of each page is thus left alone.
        """
        pfn = value % self._layout.working_set_pages
        word = 1 + (value >> 32) % (WORDS_PER_PAGE - 1)
        return pfn * PAGE_SIZE + word * 8
