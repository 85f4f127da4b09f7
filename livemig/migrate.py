"""`livemig migrate`: drive a migration over QMP and show its progress."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Final, TextIO

from livemig.progress import progress_line
from netio import QMPClient

if TYPE_CHECKING:
    from collections.abc import Mapping

POLL_S: Final = 0.1
FINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled", "in-doubt"})


async def run_migration(
    source_qmp: str,
    uri: str,
    *,
    parameters: Mapping[str, object] | None = None,
    capabilities: Mapping[str, bool] | None = None,
    progress: TextIO | None = sys.stderr,
    timeout_s: float | None = None,
) -> dict[str, object]:
    """Set parameters and capabilities, `migrate`, and poll `query-migrate` until it ends.

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
            return await _follow(qmp, progress)


async def _follow(qmp: QMPClient, progress: TextIO | None) -> dict[str, object]:
    tty = progress is not None and progress.isatty()
    last_line = ""
    while True:
        info = await qmp.execute("query-migrate")
        if not isinstance(info, dict):
            raise TypeError(f"query-migrate returned {info!r}")
        line = progress_line(info)
        if progress is not None and line != last_line:
            progress.write(("\r" + line + "\x1b[K") if tty else line + "\n")
            progress.flush()
            last_line = line
        if info.get("status") in FINAL_STATUSES:
            if progress is not None and tty:
                progress.write("\n")
            return info
        await asyncio.sleep(POLL_S if tty else POLL_S * 5)
