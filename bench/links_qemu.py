"""QEMU 7.2 on the slow link of `bench links`, side by side with livemig's hotset figures.

The same 100 Mbit/s token bucket between the same two network namespaces; QEMU (TCG) runs in
them (``ip netns exec``), its QMP on a unix socket that the bench reaches from outside. Its guest
is bench/qemu_guest.asm in mode ``hotset``: every page once, then the 16 MiB from 2 MiB on swept
for ever (one byte of each page incremented), so the hot set is as large as livemig's hotset
guest's but its pages hold one non-zero byte each: they compress and delta-encode far better than
livemig's `mixed` pages with random words written into them. The figures say what QEMU's plain
precopy, XBZRLE and multifd with zstd do on this link; they are not a like-for-like race.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench import qemu
from bench.common import MIB, say

if TYPE_CHECKING:
    from bench.harness import Migration
    from livemig.netns import NetnsRig

_MODES: Final[dict[str, tuple[dict[str, object], tuple[str, ...]]]] = {
    "plain": ({}, ()),
    "xbzrle": ({"xbzrle-cache-size": 1 << 30}, ("xbzrle",)),
    "zstd": ({"multifd-channels": 2, "multifd-compression": "zstd"}, ("multifd",)),
}


def qemu_hotset(
    rig: NetnsRig, ram_mib: int, link_bytes_per_s: float, timeout_s: float
) -> list[dict[str, object]]:
    """One QEMU migration per mode over the shaped link; [] when QEMU is not installed."""
    reason = qemu.missing()
    if reason is not None:
        say(f"  QEMU side by side: skipped ({reason})")
        return []
    say(f"  QEMU 7.2, {ram_mib} MiB guest sweeping 16 MiB for ever, same link:")
    source_host, dest_host = rig.hosts
    rows = []
    with tempfile.TemporaryDirectory(prefix="livemig-links-qemu-") as tmp:
        for mode, (parameters, capabilities) in _MODES.items():
            migration = qemu.qemu_migration(
                Path(tmp),
                "hotset",
                ram_mib,
                timeout_s=timeout_s,
                capabilities=capabilities,
                parameters=parameters,
                hosts=(source_host, dest_host),
            )
            rows.append(_row(mode, migration, link_bytes_per_s))
    return rows


def _row(mode: str, migration: Migration, link_bytes_per_s: float) -> dict[str, object]:
    total_s = migration.ms("total-time") / 1000.0
    sent = migration.ram("transferred")
    row: dict[str, object] = {
        "vmm": "qemu-7.2",
        "mode": mode,
        "status": migration.status,
        "total_s": round(total_s if migration.completed else migration.wall_s, 3),
        "transferred_bytes": sent,
        "downtime_ms": migration.ms("downtime"),
        "link_bytes_per_s": round(link_bytes_per_s),
    }
    if migration.completed:
        say(f"    QEMU {mode}: completed in {total_s:.2f} s, {sent / MIB:.0f} MiB sent, "
            f"downtime {migration.ms('downtime'):.0f} ms")  # fmt: skip
    elif migration.status == "failed":
        row["error"] = str(migration.info.get("error-desc", ""))
        say(f"    QEMU {mode}: failed: {row['error']}")
    else:
        say(f"    QEMU {mode}: {migration.status} after {migration.wall_s:.0f} s "
            "(it did not converge)")  # fmt: skip
    return row
