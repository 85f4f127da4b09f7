"""Start livemig daemons as real processes and learn their addresses from their logs.

Used by `livemig demo`, the end-to-end tests and the benchmarks. Daemons are started with
`--log-format json` and QMP (and incoming) ports 0; the `daemon_ready` log line carries the ports
the kernel picked, so parallel runs never collide.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


class DaemonError(RuntimeError):
    """A daemon did not start, or exited unexpectedly."""


@dataclass(kw_only=True)
class DaemonProcess:
    """One daemon process with its JSON log lines collected in the background."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None
    ready: dict[str, object] = field(default_factory=dict)
    lines: list[dict[str, object]] = field(default_factory=list)
    _queue: queue.Queue[dict[str, object] | None] = field(default_factory=queue.Queue)
    _pump_thread: threading.Thread | None = None

    @property
    def qmp_address(self) -> str:
        """The first QMP address from `daemon_ready`."""
        addresses = self.ready.get("qmp")
        if not isinstance(addresses, list) or not addresses:
            raise DaemonError(f"{self.name} announced no QMP address")
        return str(addresses[0])

    @property
    def incoming_uri(self) -> str:
        """The incoming migration address from `daemon_ready`."""
        incoming = self.ready.get("incoming")
        if not isinstance(incoming, str):
            raise DaemonError(f"{self.name} is not listening for a migration")
        return incoming

    def wait_for_log(self, event: str, timeout_s: float = 30.0) -> dict[str, object]:
        """Wait for a log line whose `event` is `event` (lines already seen count)."""
        for line in self.lines:
            if line.get("event") == event:
                return line
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonError(f"{self.name}: no '{event}' log line within {timeout_s} s")
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                code = self.process.wait()
                raise DaemonError(f"{self.name} exited (code {code}) before '{event}'")
            if item.get("event") == event:
                return item

    def signal(self, signum: int) -> None:
        """Send a signal (SIGKILL, SIGSTOP, SIGCONT…) to the daemon."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signum)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout_s`; return the exit code."""
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=timeout_s)
        return self.process.returncode


def start_daemon(
    module: str,
    arguments: Sequence[str],
    *,
    name: str | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    wrapper: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> DaemonProcess:
    """Start `python -m module arguments…` and wait until it logs `daemon_ready`."""
    command = [
        *wrapper,
        sys.executable,
        "-m",
        module,
        "--log-format",
        "json",
        *arguments,
    ]
    process = subprocess.Popen(  # noqa: S603 - our own daemon, arguments from our caller
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    daemon = DaemonProcess(name=name or module, process=process, log_path=log_path)
    daemon._pump_thread = threading.Thread(target=_pump, args=(daemon,), daemon=True)  # noqa: SLF001
    daemon._pump_thread.start()  # noqa: SLF001
    try:
        daemon.ready = daemon.wait_for_log("daemon_ready", timeout_s)
    except DaemonError:
        daemon.stop()
        raise
    return daemon


def _pump(daemon: DaemonProcess) -> None:
    stream = daemon.process.stderr
    assert stream is not None  # noqa: S101 - created with stderr=PIPE
    sink: IO[bytes] | None = daemon.log_path.open("ab") if daemon.log_path else None
    try:
        for raw in stream:
            if sink is not None:
                sink.write(raw)
                sink.flush()
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "unparsed", "text": raw.decode(errors="replace").rstrip()}
            if isinstance(line, dict):
                daemon.lines.append(line)
                daemon._queue.put(line)  # noqa: SLF001 - the pump owns the queue
    finally:
        stream.close()
        daemon._queue.put(None)  # noqa: SLF001
        if sink is not None:
            sink.close()
