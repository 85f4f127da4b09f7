"""The timer: a virtual clock in ticks and one deadline ("timer").

The clock advances only while the VM runs (QEMU stops the virtual clock on vm_stop), so it is
also the machine's tick count. When the clock reaches the deadline the timer raises the
machine timer interrupt on one vCPU (round robin) and disarms; the guest's handler re-arms it.
"""

from __future__ import annotations

from typing import Final

from vmsim.errors import InvalidStateError
from vmsim.prng import U64_MASK
from vmsim.vmstate.description import VMStateDescription
from vmsim.vmstate.fields import field_uint

__all__ = ["DISARMED", "TIMER_VMSD", "Timer"]

DISARMED: Final = U64_MASK
"""Deadline value of a timer that is not armed."""


class Timer:
    """The virtual clock and its deadline.

    Attributes:
        clock_ticks: ticks executed so far.
        deadline_ticks: the clock value at which the interrupt fires, or DISARMED.
        irq_count: interrupts raised so far (picks the target vCPU, round robin).
    """

    def __init__(self) -> None:
        self.clock_ticks = 0
        self.deadline_ticks = DISARMED
        self.irq_count = 0

    @property
    def armed(self) -> bool:
        """Whether a deadline is set."""
        return self.deadline_ticks != DISARMED

    def expire(self, n_vcpus: int) -> int:
        """Disarm after the deadline was reached; return the vCPU to interrupt."""
        self.deadline_ticks = DISARMED
        target = self.irq_count % n_vcpus
        self.irq_count = (self.irq_count + 1) & U64_MASK
        return target


def _timer_post_load(timer: Timer, _version_id: int) -> None:
    # The source handles an expiry in the tick it happens, so a saved deadline is in the future.
    if timer.armed and timer.deadline_ticks <= timer.clock_ticks:
        raise InvalidStateError(
            f"field 'deadline_ticks': {timer.deadline_ticks} is not after the clock"
            f" ({timer.clock_ticks})",
            device="timer",
            field="deadline_ticks",
        )


TIMER_VMSD: Final[VMStateDescription[Timer]] = VMStateDescription(
    name="timer",
    version_id=1,
    minimum_version_id=1,
    fields=(
        field_uint("clock_ticks", 64),
        field_uint("deadline_ticks", 64),
        field_uint("irq_count", 64),
    ),
    post_load=_timer_post_load,
)
