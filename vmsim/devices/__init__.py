"""The machine's devices, each with its VMState description beside its code."""

from __future__ import annotations

from vmsim.devices.cpu import CPU_VECTOR_VMSD, CPU_VMSD, VCpu
from vmsim.devices.globalstate import GLOBALSTATE_VMSD, GlobalState
from vmsim.devices.its import ITS_VMSD, Its
from vmsim.devices.serial import SERIAL_VMSD, Serial
from vmsim.devices.timer import TIMER_VMSD, Timer

__all__ = [
    "CPU_VECTOR_VMSD",
    "CPU_VMSD",
    "GLOBALSTATE_VMSD",
    "ITS_VMSD",
    "SERIAL_VMSD",
    "TIMER_VMSD",
    "GlobalState",
    "Its",
    "Serial",
    "Timer",
    "VCpu",
]
