"""Run a test's coroutine on a fresh event loop of a given kind, strictly (uvloop's _testbase).

The test fails if anything reached the loop's exception handler (an unhandled task exception, a
callback error, a task destroyed while pending) or if tasks are left running at the end.
"""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING, Any

import uvloop

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

LOOP_KINDS = ["asyncio", "uvloop"]


def run_strictly(
    loop_kind: str, main: Callable[[], Coroutine[Any, Any, Any]], *, timeout_s: float = 10.0
) -> Any:
    """Run `main()` on a new `loop_kind` loop; fail on loop errors and leftover tasks."""
    errors: list[dict[str, Any]] = []
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop

    async def guarded() -> Any:
        async with asyncio.timeout(timeout_s):
            result = await main()
        current = asyncio.current_task()
        leftover = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        assert leftover == [], f"tasks left running: {leftover}"
        return result

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.get_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        result = runner.run(guarded())
        gc.collect()
    assert errors == [], f"the {loop_kind} loop's exception handler was called: {errors}"
    return result
