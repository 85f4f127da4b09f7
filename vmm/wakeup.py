"""A wake-up the vCPU loop sleeps on, with no task per sleep.

`asyncio.wait_for(event.wait(), delay)` creates a task and a timeout scope every time; the vCPU
loop of a 1000 Hz guest sleeps up to 500 times a second, and that machinery is a fifth of what
an idle VM costs (source daemon, 1 GiB idle guest: 0.11-0.15 of a core with it, 0.10-0.11
with this). A future and one `call_later` do the same job.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """Set by whoever changes what the vCPU loop waits for; `sleep` ends early when set."""

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Wake the sleeper (now, or the next one if none sleeps)."""
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        """Forget an earlier `set`."""
        self._set = False

    async def sleep(self, delay_s: float | None) -> None:
        """Until `set` is called (at once if it was since `clear`), or `delay_s` passed."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if delay_s is None else loop.call_later(delay_s, _release, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
