"""netio.lifecycle.run: the daemon's main under uvloop or asyncio, with SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netio import lifecycle

REPO = Path(__file__).resolve().parents[3]

DAEMON = textwrap.dedent(
    """
    import asyncio, sys
    from netio import configure_logging, run

    IGNORE_SHUTDOWN = sys.argv[2] == "stubborn"

    async def main(shutdown: asyncio.Event) -> int:
        print("ready", flush=True)
        if IGNORE_SHUTDOWN:
            await shutdown.wait()
            print("ignoring", flush=True)
            await asyncio.sleep(60)
        await shutdown.wait()
        print("graceful", flush=True)
        return 3

    configure_logging(json=True)
    sys.exit(run(main, loop=sys.argv[1]))
    """
)


def start_daemon(loop_kind: str, mode: str = "normal") -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", DAEMON, loop_kind, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    assert "ready\n" == process.stdout.readline()
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_sets_the_shutdown_event_and_main_returns_its_code(loop_kind, signum):
    process = start_daemon(loop_kind)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=10)

    assert 3 == process.returncode, stderr
    assert "graceful\n" == stdout
    assert '"event": "shutdown_requested"' in stderr
    assert f'"signal": "{signum.name}"' in stderr


def test_a_second_signal_forces_the_exit(loop_kind):
    process = start_daemon(loop_kind, "stubborn")
    process.send_signal(signal.SIGTERM)
    assert process.stdout is not None
    assert "ignoring\n" == process.stdout.readline()
    process.send_signal(signal.SIGTERM)
    _stdout, stderr = process.communicate(timeout=10)

    assert 128 + signal.SIGTERM == process.returncode, stderr
    assert '"event": "shutdown_forced"' in stderr


def test_run_returns_the_exit_code_in_process(loop_kind):
    async def main(shutdown: asyncio.Event) -> int:
        assert not shutdown.is_set()
        await asyncio.sleep(0)
        return 7

    assert 7 == lifecycle.run(main, loop=loop_kind)  # type: ignore[arg-type]
    # The handlers are removed again: SIGINT is Python's default once more.
    assert signal.default_int_handler == signal.getsignal(signal.SIGINT)


def test_run_propagates_exceptions_from_main():
    async def main(shutdown: asyncio.Event) -> int:
        raise LookupError("no VM")

    with pytest.raises(LookupError, match="no VM"):
        lifecycle.run(main, loop="asyncio")


def test_unknown_loop_is_refused():
    async def main(shutdown: asyncio.Event) -> int:
        return 0

    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        lifecycle.run(main, loop="trio")  # type: ignore[arg-type]
