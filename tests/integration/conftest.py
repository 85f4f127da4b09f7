"""In-process integration tests: both daemons' machines and runners in one event loop.

Every test runs on the stdlib loop and on uvloop (`run`), strictly: it fails if anything reached
the loop's exception handler or tasks are left running. Migrations go over real loopback
sockets, with real QMP clients, and take well under a second each.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.loops import LOOP_KINDS, run_strictly

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="it-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run(loop_kind: str) -> Callable[..., Any]:
    """``run(coroutine_function, timeout_s=20)`` on this test's loop kind."""

    def run_on_loop(
        main: Callable[[], Coroutine[Any, Any, Any]], *, timeout_s: float = 20.0
    ) -> Any:
        return run_strictly(loop_kind, main, timeout_s=timeout_s)

    return run_on_loop
