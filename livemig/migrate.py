"""`livemig migrate`: drive a migration over QMP and show its progress."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TextIO

from livemig.progress import progress_line
from netio import QMPClient

if TYPE_CHECKING:
    from collections.abc import Mapping

POLL_S: Final = 0.1
FINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled", "in-doubt"})
"""A postcopy-paused migration is followed on: x-auto-recover takes it up when the link heals."""


@dataclass(frozen=True, slots=True)
class PostcopyTrigger:
    """When `livemig migrate --postcopy` sends `migrate-start-postcopy`.

    After `after_s` seconds, or once the pass count (`dirty-sync-count`) exceeds `after_pass`
    (QEMU counts the setup sync as pass 1: pass 1 done means a count of 2); the first that
    holds. Neither given: after the first pass, as `virsh migrate --postcopy-after-precopy`.
    """

    after_s: float | None = None
    after_pass: int | None = None

    def due(self, info: Mapping[str, object], elapsed_s: float) -> bool:
        """Whether to switch now, by this `query-migrate` reply."""
        if info.get("status") != "active":
            return False
        if self.after_s is not None and elapsed_s >= self.after_s:
            return True
        after_pass = 1 if self.after_s is None and self.after_pass is None else self.after_pass
        ram = info.get("ram")
        passes = ram.get("dirty-sync-count", 0) if isinstance(ram, dict) else 0
        return after_pass is not None and isinstance(passes, int) and passes > after_pass


async def run_migration(
    source_qmp: str,
    uri: str,
    *,
    parameters: Mapping[str, object] | None = None,
    capabilities: Mapping[str, bool] | None = None,
    progress: TextIO | None = sys.stderr,
    timeout_s: float | None = None,
    postcopy: PostcopyTrigger | None = None,
) -> dict[str, object]:
    """Set parameters and capabilities, `migrate`, and poll `query-migrate` until it ends.

    With `postcopy` (and the postcopy-ram capability), `migrate-start-postcopy` goes once it
    is due.

    Returns:
        The last `query-migrate` reply (status completed, failed, cancelled or in-doubt).
    """
    async with await QMPClient.connect(source_qmp) as qmp:
        if capabilities:
            await qmp.execute(
                "migrate-set-capabilities",
                {
                    "capabilities": [
                        {"capability": name, "state": state} for name, state in capabilities.items()
                    ]
                },
            )
        if parameters:
            await qmp.execute("migrate-set-parameters", dict(parameters))
        await qmp.execute("migrate", {"uri": uri})
        async with asyncio.timeout(timeout_s):
            return await _follow(qmp, progress, postcopy)


async def _follow(
    qmp: QMPClient, progress: TextIO | None, postcopy: PostcopyTrigger | None
) -> dict[str, object]:
    tty = progress is not None and progress.isatty()
    last_line = ""
    started_at = asyncio.get_running_loop().time()
    while True:
        info = await qmp.execute("query-migrate")
        if not isinstance(info, dict):
            raise TypeError(f"query-migrate returned {info!r}")
        elapsed_s = asyncio.get_running_loop().time() - started_at
        if postcopy is not None and postcopy.due(info, elapsed_s):
            await qmp.execute("migrate-start-postcopy")
            postcopy = None
        line = progress_line(info)
        if progress is not None and line != last_line:
            progress.write(("\r" + line + "\x1b[K") if tty else line + "\n")
            progress.flush()
            last_line = line
        if info.get("status") in FINAL_STATUSES:
            if progress is not None and tty:
                progress.write("\n")
            return info
        await asyncio.sleep(POLL_S if tty or postcopy is not None else POLL_S * 5)
