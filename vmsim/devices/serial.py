"""A 16550-style UART with a transmit FIFO ("serial").

The guest writes bytes into the FIFO; the line drains one byte every DRAIN_PERIOD_TICKS ticks
of guest time. Drained bytes have left the machine: `take_output` hands them to the daemon,
and they are neither device state nor part of the digest. Draining is computed lazily from the
clock (`catch_up`), which gives the same result as draining tick by tick.
"""

from __future__ import annotations

from typing import Final

from vmsim.errors import InvalidStateError
from vmsim.prng import U64_MASK
from vmsim.vmstate.description import VMStateDescription
from vmsim.vmstate.fields import field_bool, field_uint, field_vbuffer

__all__ = ["DRAIN_PERIOD_TICKS", "FIFO_BYTES", "SERIAL_VMSD", "Serial"]

FIFO_BYTES: Final = 16
DRAIN_PERIOD_TICKS: Final = 4
LSR_OVERRUN: Final = 0x02
LSR_THR_EMPTY: Final = 0x20
LSR_TX_EMPTY: Final = 0x40
_LCR_8N1: Final = 0x03
_MCR_DTR_RTS_OUT2: Final = 0x0B
_DIVISOR_115200: Final = 1


class Serial:
    """UART registers, the transmit FIFO and the output that already left the machine.

    Attributes:
        ier: interrupt enable register.
        lcr: line control register.
        mcr: modem control register.
        lsr: line status register (THR empty, transmitter empty, overrun).
        scr: scratch register.
        divisor: baud rate divisor latch.
        fifo_enabled: FIFO control: FIFOs on.
        tx_fifo: bytes waiting to be transmitted (at most FIFO_BYTES).
        tx_fifo_len: len(tx_fifo) (the variable buffer's length field).
        tx_bytes: bytes transmitted so far.
        overruns: bytes dropped because the FIFO was full.
        drained_to_ticks: the clock value up to which draining has been applied.
    """

    def __init__(self) -> None:
        self.ier = 0
        self.lcr = _LCR_8N1
        self.mcr = _MCR_DTR_RTS_OUT2
        self.lsr = LSR_THR_EMPTY | LSR_TX_EMPTY
        self.scr = 0
        self.divisor = _DIVISOR_115200
        self.fifo_enabled = True
        self.tx_fifo = b""
        self.tx_fifo_len = 0
        self.tx_bytes = 0
        self.overruns = 0
        self.drained_to_ticks = 0
        self._output = bytearray()

    def transmit(self, byte: int) -> None:
        """The guest writes one byte to the transmit holding register."""
        if len(self.tx_fifo) >= FIFO_BYTES:
            self.overruns = (self.overruns + 1) & 0xFFFF_FFFF
            self.lsr |= LSR_OVERRUN
            return
        self._set_fifo(self.tx_fifo + bytes((byte,)))

    def catch_up(self, clock_ticks: int) -> None:
        """Drain the bytes the line sent up to clock_ticks (one per DRAIN_PERIOD_TICKS)."""
        slots = clock_ticks // DRAIN_PERIOD_TICKS - self.drained_to_ticks // DRAIN_PERIOD_TICKS
        self.drained_to_ticks = clock_ticks
        count = min(max(slots, 0), len(self.tx_fifo))
        if count:
            self._output += self.tx_fifo[:count]
            self.tx_bytes = (self.tx_bytes + count) & U64_MASK
            self._set_fifo(self.tx_fifo[count:])

    def take_output(self) -> bytes:
        """Return the bytes transmitted since the last call."""
        output = bytes(self._output)
        self._output.clear()
        return output

    def _set_fifo(self, fifo: bytes) -> None:
        self.tx_fifo = fifo
        self.tx_fifo_len = len(fifo)
        empty = LSR_THR_EMPTY | LSR_TX_EMPTY
        self.lsr = (self.lsr | empty) if not fifo else (self.lsr & ~empty)


def _serial_post_load(serial: Serial, _version_id: int) -> None:
    empty = (serial.lsr & LSR_THR_EMPTY) != 0
    if empty != (serial.tx_fifo_len == 0):
        raise InvalidStateError(
            "field 'lsr': THR-empty bit disagrees with the FIFO", device="serial", field="lsr"
        )


SERIAL_VMSD: Final[VMStateDescription[Serial]] = VMStateDescription(
    name="serial",
    version_id=1,
    minimum_version_id=1,
    fields=(
        field_uint("ier", 8),
        field_uint("lcr", 8),
        field_uint("mcr", 8),
        field_uint("lsr", 8),
        field_uint("scr", 8),
        field_uint("divisor", 16),
        field_bool("fifo_enabled"),
        field_uint("tx_fifo_len", 32),
        field_vbuffer("tx_fifo", "tx_fifo_len", FIFO_BYTES),
        field_uint("tx_bytes", 64),
        field_uint("overruns", 32),
        field_uint("drained_to_ticks", 64),
    ),
    post_load=_serial_post_load,
)
