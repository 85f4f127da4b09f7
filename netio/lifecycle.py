"""Run a daemon's main coroutine on uvloop or the stdlib loop, with graceful signal handling.

The first SIGTERM or SIGINT sets the shutdown `asyncio.Event` handed to ``main``, which is expected
to wind down (stop accepting, finish or abort a migration, close QMP) and return an exit code. A
second signal while shutting down cancels ``main``; `run` then returns ``128 + signal number``,
the shell's convention for death by signal.

This is the only netio module that imports uvloop.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Literal

import structlog

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["LoopKind", "run"]

LoopKind = Literal["uvloop", "asyncio"]
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_log = structlog.get_logger("netio.lifecycle")


def run(
    main: Callable[[asyncio.Event], Awaitable[int]],
    *,
    loop: LoopKind = "uvloop",
) -> int:
    """Run ``main(shutdown)`` to completion and return its exit code.

    Args:
        main: The daemon's main coroutine function; it receives an event that is set on the
            first SIGTERM or SIGINT.
        loop: ``"uvloop"`` (the default) or ``"asyncio"`` (the stdlib loop).

    Returns:
        ``main``'s exit code, or ``128 + signum`` when a second signal cancelled it.

    Raises:
        ValueError: ``loop`` is neither ``"uvloop"`` nor ``"asyncio"``.
    """
    if loop == "uvloop":
        import uvloop  # noqa: PLC0415 - only this entry point selects the loop

        return uvloop.run(_supervise(main))
    if loop == "asyncio":
        return asyncio.run(_supervise(main))
    raise ValueError(f"unknown event loop {loop!r}: expected 'uvloop' or 'asyncio'")


async def _supervise(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    running = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    task = asyncio.ensure_future(main(shutdown))
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        if len(received) == 1:
            _log.info("shutdown_requested", signal=signum.name)
            shutdown.set()
        else:
            _log.warning("shutdown_forced", signal=signum.name)
            task.cancel()

    for signum in _SIGNALS:
        running.add_signal_handler(signum, on_signal, signum)
    try:
        return await task
    except asyncio.CancelledError:
        if len(received) < 2:  # noqa: PLR2004 - cancelled by us only on the second signal
            raise
        return 128 + received[-1].value
    finally:
        for signum in _SIGNALS:
            running.remove_signal_handler(signum)
