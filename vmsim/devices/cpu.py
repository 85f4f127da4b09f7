"""The vCPU's architectural state (RISC-V flavoured) and its VMState ("cpu", one per vCPU).

Every register is real state: the register file's hash feeds the values the guest writes to
RAM and to the UART, so a register that arrives wrong after a migration changes what the guest
does next, and the digest comparison catches it.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np
import xxhash

from vmsim.errors import InvalidStateError
from vmsim.prng import U64_MASK, mix64
from vmsim.vmstate.description import VMStateDescription
from vmsim.vmstate.fields import field_uint, field_uint_array

__all__ = [
    "CODE_BASE",
    "CODE_SIZE_BYTES",
    "CPU_VMSD",
    "MIE_MTIE",
    "MIP_MTIP",
    "MSTATUS_MIE",
    "N_GPRS",
    "VCpu",
]

N_GPRS: Final = 32
N_FPRS: Final = 32
N_VREG_WORDS: Final = 64  # 32 vector registers of 128 bits
MIP_MTIP: Final = 1 << 7  # machine timer interrupt pending
MIE_MTIE: Final = 1 << 7  # machine timer interrupt enable
MSTATUS_MIE: Final = 1 << 3
_MSTATUS_VS_SHIFT: Final = 9
_MSTATUS_VS_MASK: Final = 3 << _MSTATUS_VS_SHIFT
VS_OFF: Final = 0
VS_INITIAL: Final = 1
VS_DIRTY: Final = 3
CODE_BASE: Final = 0x8000_0000
CODE_SIZE_BYTES: Final = 64 * 1024
_FIRST_CHAIN_GPR: Final = 8  # x8..x31 take the event hash chain; x1..x7 have fixed roles
_N_CHAIN_GPRS: Final = N_GPRS - _FIRST_CHAIN_GPR
_SCALARS: Final = struct.Struct("<4Q")


class VCpu:
    """One vCPU's registers.

    Register roles: x0 is hard-wired to zero, x2 is the stack pointer, x5/x6/x7 hold the ab
    workload's position, completed sweeps and 'B's written; x8..x31 take the event hash chain.

    Attributes:
        index: the vCPU number (the section's instance id; not migrated).
        gprs: 32 general-purpose registers (u64).
        fprs: 32 floating-point registers as u64 bit patterns.
        pc: program counter.
        mstatus: machine status (MIE, and the vector unit state VS in bits 9-10).
        mip: interrupts pending.
        mie: interrupts enabled.
        prng_counter: the next counter value of this vCPU's random stream.
        instret: instructions retired.
        mscratch: machine scratch; the guest counts handled interrupts in it (VMSD v2 only).
        vregs: the vector registers (valid while the vector unit is on, zero otherwise).
        vl: vector length.
        vtype: vector type.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.gprs = np.zeros(N_GPRS, dtype=np.uint64)
        self.fprs = np.zeros(N_FPRS, dtype=np.uint64)
        self.pc = 0
        self.mstatus = 0
        self.mip = 0
        self.mie = 0
        self.prng_counter = 0
        self.instret = 0
        self.mscratch = 0
        self.vregs = np.zeros(N_VREG_WORDS, dtype=np.uint64)
        self.vl = 0
        self.vtype = 0

    @property
    def vector_on(self) -> bool:
        """Whether the vector unit is enabled (mstatus.VS != Off)."""
        return (self.mstatus & _MSTATUS_VS_MASK) != 0

    def set_vector_unit(self, *, on: bool) -> None:
        """Switch the vector unit; both directions leave the registers in their reset state."""
        # Off -> zero registers, so a source that never sends cpu/vector and a destination
        # that keeps its defaults agree; On -> Initial, which by definition is zeroed.
        self.vregs[:] = 0
        self.vl = 0
        self.vtype = 0
        status = VS_INITIAL if on else VS_OFF
        self.mstatus = (self.mstatus & ~_MSTATUS_VS_MASK) | (status << _MSTATUS_VS_SHIFT)

    def fold(self) -> int:
        """Hash the register file that changes only at events (not pc, counters)."""
        hasher = xxhash.xxh3_64()
        hasher.update(self.gprs.tobytes())
        hasher.update(self.fprs.tobytes())
        hasher.update(_SCALARS.pack(self.mstatus, self.mie, self.mscratch, self.vl))
        if self.vector_on:
            hasher.update(self.vregs.tobytes())
            hasher.update(_SCALARS.pack(self.vtype, 0, 0, 0))
        return hasher.intdigest()

    def retire_event(self, value: int) -> None:
        """Record an event's hash: it moves into a chain register, an FPR and the pc."""
        self.gprs[_FIRST_CHAIN_GPR + value % _N_CHAIN_GPRS] = value
        self.fprs[(value >> 8) % N_FPRS] = mix64(value)
        if self.vector_on:
            self.vregs[(value >> 16) % N_VREG_WORDS] = mix64(value ^ self.vl)
            self.vl = (self.vl + 1) & U64_MASK
            self.mstatus |= VS_DIRTY << _MSTATUS_VS_SHIFT
        self.instret = (self.instret + 1) & U64_MASK
        self.advance_pc(1 + (value >> 24) % 64)

    def advance_pc(self, n_instructions: int) -> None:
        """Move the pc on by n instructions, wrapping inside the code region."""
        offset = (self.pc - CODE_BASE + 4 * n_instructions) % CODE_SIZE_BYTES
        self.pc = CODE_BASE + offset


def _vector_needed(cpu: VCpu) -> bool:
    return cpu.vector_on


def _cpu_pre_load(cpu: VCpu) -> None:
    # An absent cpu/vector subsection means "vector unit off": start from the reset state.
    cpu.vregs = np.zeros(N_VREG_WORDS, dtype=np.uint64)
    cpu.vl = 0
    cpu.vtype = 0


def _cpu_post_load(cpu: VCpu, _version_id: int) -> None:
    if int(cpu.gprs[0]) != 0:
        raise InvalidStateError("field 'gprs': x0 must be zero", device="cpu", field="gprs")
    if not CODE_BASE <= cpu.pc < CODE_BASE + CODE_SIZE_BYTES or cpu.pc % 4:
        raise InvalidStateError(
            f"field 'pc': {cpu.pc:#x} outside the code", device="cpu", field="pc"
        )


CPU_VECTOR_VMSD: Final[VMStateDescription[VCpu]] = VMStateDescription(
    name="cpu/vector",
    version_id=1,
    minimum_version_id=1,
    needed=_vector_needed,
    fields=(
        field_uint_array("vregs", 64, N_VREG_WORDS),
        field_uint("vl", 64),
        field_uint("vtype", 64),
    ),
)

CPU_VMSD: Final[VMStateDescription[VCpu]] = VMStateDescription(
    name="cpu",
    version_id=2,
    minimum_version_id=1,
    fields=(
        field_uint_array("gprs", 64, N_GPRS),
        field_uint_array("fprs", 64, N_FPRS),
        field_uint("pc", 64),
        field_uint("mstatus", 64),
        field_uint("mip", 64),
        field_uint("mie", 64),
        field_uint("prng_counter", 64),
        field_uint("instret", 64),
        field_uint("mscratch", 64, version_id=2),
    ),
    subsections=(CPU_VECTOR_VMSD,),
    pre_load=_cpu_pre_load,
    post_load=_cpu_post_load,
)
"""The cpu VMSD: version 2 added mscratch; version 1 streams still load (it keeps its value)."""
