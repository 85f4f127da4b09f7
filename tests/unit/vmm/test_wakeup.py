"""The vCPU loop's wake-up: a sleep that `set` ends early, with no task per sleep."""

from __future__ import annotations

import asyncio
import time

from vmm.wakeup import Wakeup


async def test_a_sleep_lasts_its_delay_when_nobody_wakes_it() -> None:
    wakeup = Wakeup()
    started = time.monotonic()

    await wakeup.sleep(0.05)

    assert time.monotonic() - started >= 0.045


async def test_set_ends_a_sleep_at_once() -> None:
    wakeup = Wakeup()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, wakeup.set)
    started = time.monotonic()

    await wakeup.sleep(30.0)

    assert time.monotonic() - started < 5.0


async def test_a_set_before_the_sleep_counts_until_cleared() -> None:
    wakeup = Wakeup()
    wakeup.set()
    await asyncio.wait_for(wakeup.sleep(None), 5.0)  # at once: it was set

    wakeup.clear()
    sleeper = asyncio.create_task(wakeup.sleep(None))
    await asyncio.sleep(0.02)
    assert not sleeper.done()  # cleared: it waits
    wakeup.set()
    await asyncio.wait_for(sleeper, 5.0)


async def test_a_cancelled_sleep_leaves_no_timer_that_fires_later() -> None:
    wakeup = Wakeup()
    sleeper = asyncio.create_task(wakeup.sleep(0.01))
    await asyncio.sleep(0)
    sleeper.cancel()
    await asyncio.sleep(0.03)  # the timer would have resolved a stale future here

    wakeup.clear()
    started = time.monotonic()
    await wakeup.sleep(0.02)
    assert time.monotonic() - started >= 0.015
