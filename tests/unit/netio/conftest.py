"""Fixtures for netio's tests: every socket test runs on both event loops.

`run` executes a coroutine function on a fresh loop of the parametrised kind (uvloop's
``_testbase`` idea): the test fails if anything reached the loop's exception handler (an unhandled
task exception, a callback error, a task destroyed while pending) or if tasks are left running.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

LOOP_KINDS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Runner = Callable[..., Any]


@pytest.fixture
def run(loop_kind: str) -> Runner:
    """Return ``run(coroutine_function, timeout_s=10)`` bound to this test's loop kind."""

    def run_on_loop(
        main: Callable[[], Coroutine[Any, Any, Any]], *, timeout_s: float = 10.0
    ) -> Any:
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

    return run_on_loop


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nio-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
