"""Fixtures for netio's tests: every socket test runs on both event loops.

`run` executes a coroutine function on a fresh loop of the parametrised kind (uvloop's
``_testbase`` idea): the test fails if anything reached the loop's exception handler (an unhandled
task exception, a callback error, a task destroyed while pending) or if tasks are left running.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.loops import LOOP_KINDS, run_strictly


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
        return run_strictly(loop_kind, main, timeout_s=timeout_s)

    return run_on_loop


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nio-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
