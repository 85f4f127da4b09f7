"""`livemig demo`: both daemons on loopback, a busy VM migrated, and the replay check.

It is the first thing a user runs: it starts a source daemon with a busy guest and a destination
daemon as real processes, migrates over TCP with a live progress bar, prints the summary, then
stops the migrated VM after it ran on the destination and compares its state digest with
`livemig replay` of the same machine for the same number of ticks.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from livemig.daemons import DaemonProcess, start_daemon
from livemig.migrate import run_migration
from livemig.progress import summary_lines
from livemig.replay import replay_digest
from netio import QMPClient
from vmsim import MachineConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoOptions:
    """What the demo migrates and how."""

    ram_mib: int = 512
    workload: str = "random"
    dirty_rate: int = 100_000
    downtime_limit_ms: int = 300
    run_before_s: float = 1.0
    run_after_s: float = 1.0
    loop: str = "uvloop"
    digest_check: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoResult:
    """What the demo found."""

    info: dict[str, object]
    ticks: int
    digest: str | None
    replay: str | None

    @property
    def ok(self) -> bool:
        """Completed, and the migrated VM matches the replay."""
        return self.info.get("status") == "completed" and self.digest == self.replay


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> DemoResult:
    """Run the demo; daemon logs go to a temporary directory named in the output."""
    logs = Path(tempfile.mkdtemp(prefix="livemig-demo-"))
    out.write(f"logs: {logs}\n")
    source = start_daemon(
        "source_daemon",
        [
            "--qmp", "tcp:127.0.0.1:0",
            "--ram-mib", str(options.ram_mib),
            "--workload", options.workload,
            "--dirty-rate", str(options.dirty_rate),
            "--fill", "random",
            "--loop", options.loop,
        ],
        name="source",
        log_path=logs / "source.log",
    )  # fmt: skip
    dest = start_daemon(
        "dest_daemon",
        ["--qmp", "tcp:127.0.0.1:0", "--incoming", "tcp:127.0.0.1:0", "--loop", options.loop],
        name="dest",
        log_path=logs / "dest.log",
    )
    try:
        return await _migrate_and_check(options, source, dest, out)
    finally:
        source.stop()
        dest.stop()


async def _migrate_and_check(
    options: DemoOptions, source: DaemonProcess, dest: DaemonProcess, out: TextIO
) -> DemoResult:
    out.write(
        f"source VM: {options.ram_mib} MiB, workload {options.workload}, "
        f"{options.dirty_rate} page writes/s; running {options.run_before_s:g} s first\n"
    )
    await asyncio.sleep(options.run_before_s)
    info = await run_migration(
        source.qmp_address,
        dest.incoming_uri,
        parameters={"downtime-limit": options.downtime_limit_ms},
        capabilities={"events": True, "x-digest-check": options.digest_check},
        progress=sys.stderr,
        timeout_s=600,
    )
    out.write("\n".join(summary_lines(info)) + "\n")
    if info.get("status") != "completed":
        return DemoResult(info=info, ticks=0, digest=None, replay=None)
    await asyncio.sleep(options.run_after_s)
    async with await QMPClient.connect(dest.qmp_address) as qmp:
        await qmp.execute("stop")
        vm = await qmp.execute("x-query-vm")
    if not isinstance(vm, dict):
        raise TypeError(f"x-query-vm returned {vm!r}")
    ticks = int(vm["ticks"])
    config = MachineConfig.from_dict(vm["config"])
    replayed = replay_digest(config, ticks)["digest"]
    digest = vm.get("digest")
    result = DemoResult(
        info=info,
        ticks=ticks,
        digest=str(digest) if digest is not None else None,
        replay=str(replayed),
    )
    verdict = "MATCH" if result.ok else "MISMATCH"
    out.write(
        f"replay check:  {verdict} after {ticks} ticks "
        f"(destination {result.digest}, replay {result.replay})\n"
    )
    return result
