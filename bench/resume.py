"""Precopy resume: a link cut for 2 s in the middle of the first pass.

Issue 12's figure: "a precopy migration over a link cut for 2 s mid-pass completes after the cut
without resending what had arrived (bytes sent <= RAM + dirtied pages + 5 %)". The daemons talk
through a fault proxy in this process; once 40 % of RAM went, the proxy resets the connection
and refuses every new one for 2 s, then lets them through. `x-precopy-resume-ms` (10 s) lets
the source reconnect; the destination reports how many RAM frames it loaded and only the pages
of the frames after them, and those the guest dirtied, go again.

Each guest migrates twice in the same run, without and with the cut (the baseline). "Dirtied"
is the pages the guest wrote during the migration, from the source's per-pass record (pass 2
on; the setup pass counts all of RAM). QEMU cannot resume a precopy: a cut fails it, and a new
migration sends the whole RAM again; the row "restart" is that cost (bytes before the cut plus
a whole migration), for comparison.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

from bench.common import MIB, header, say, table, verdict, warm_memory
from bench.harness import Pair, VmSpec
from faultproxy import FaultProxy, parse_fault
from netio import QMPClient, TcpAddress

if TYPE_CHECKING:
    from bench.common import Run

CUT_S: Final = 2.0
CUT_AT_FRACTION: Final = 0.4
GOAL_EXTRA_FRACTION: Final = 0.05
BANDWIDTH: Final = 0  # unlimited: frames are in flight when the cut comes (a capped stream
# idles between its slots, and a cut there finds every frame delivered: nothing to resend)
Row = dict[str, object]


def resume(run: Run) -> dict[str, object]:
    ram_mib = run.pick(1024, 256)
    header(f"Precopy resume: {ram_mib} MiB guests, link cut for {CUT_S:.0f} s mid-pass")
    guests = {
        "idle": VmSpec(ram_mib=ram_mib),
        "busy": VmSpec(ram_mib=ram_mib, workload="random", dirty_rate=5000),
    }
    rows = [
        _migrate(run, name, vm, cut=cut) for name, vm in guests.items() for cut in (False, True)
    ]
    table(
        ["guest", "cut", "status", "total s", "sent MiB", "RAM+dirtied MiB", "extra %", "breaks"],
        [
            [
                r["guest"],
                "yes" if r["cut"] else "no",
                r["status"],
                f"{r['total_s']:.2f}",
                f"{r['sent_mib']:.0f}",
                f"{r['bound_mib']:.0f}",
                f"{r['extra_percent']:+.1f}",
                r["breaks"],
            ]
            for r in rows
        ],
    )
    for r in rows:
        if r["cut"]:
            say(
                f"  {r['guest']}: a restart (QEMU: the cut fails it) would send "
                f"{r['restart_mib']:.0f} MiB instead of {r['sent_mib']:.0f} MiB"
            )
    cut_rows = [r for r in rows if r["cut"]]
    goal = all(
        r["status"] == "completed"
        and r["replay_matches"]
        and float(str(r["extra_percent"])) <= GOAL_EXTRA_FRACTION * 100
        for r in cut_rows
    )
    say(
        f"  goal sent <= RAM + dirtied + {GOAL_EXTRA_FRACTION:.0%} after a {CUT_S:.0f} s cut: "
        f"{verdict(goal)}"
    )
    return {"ram_mib": ram_mib, "cut_s": CUT_S, "runs": rows, "goals": {"resume_bytes": goal}}


def _migrate(run: Run, guest: str, vm: VmSpec, *, cut: bool) -> Row:
    warm_memory(2 * vm.ram_bytes + 512 * MIB)
    with Pair(vm, log_dir=run.settings.out / "logs") as pair:
        row = asyncio.run(_through_proxy(pair, cut=cut))
        if row["status"] == "completed":
            pair.holder = 1 - pair.holder
            row["replay_matches"] = pair.replay_matches()
        else:
            row["replay_matches"] = None
    row.update(guest=guest, cut=cut)
    ram = vm.ram_bytes
    bound = ram + int(str(row["dirtied_bytes"]))
    row["bound_mib"] = bound / MIB
    row["extra_percent"] = (int(str(row["sent_bytes"])) - bound) / ram * 100
    row["sent_mib"] = int(str(row["sent_bytes"])) / MIB
    say(
        f"    {guest}, cut {cut}: {row['status']} in {row['total_s']:.2f} s, "
        f"{row['sent_mib']:.0f} MiB sent, RAM + dirtied {row['bound_mib']:.0f} MiB, "
        f"replay {row['replay_matches']}"
    )
    return row


async def _through_proxy(pair: Pair, *, cut: bool) -> Row:
    host, port = pair.dest.incoming_uri.removeprefix("tcp:").rsplit(":", 1)
    proxy = FaultProxy(upstream=TcpAddress(host=host, port=int(port)))
    bound = await proxy.start(TcpAddress(host="127.0.0.1", port=0))
    try:
        async with await QMPClient.connect(pair.source.qmp_address) as source:
            caps = [{"capability": "events", "state": True}]
            await source.execute("migrate-set-capabilities", {"capabilities": caps})
            await source.execute("migrate-set-parameters", {"max-bandwidth": BANDWIDTH})
            started = time.perf_counter()
            await source.execute("migrate", {"uri": f"tcp:127.0.0.1:{bound.port}"})  # type: ignore[union-attr]
            sent_at_cut = await _cut_mid_pass(source, proxy, pair.vm.ram_bytes) if cut else 0
            await source.execute("migrate-set-parameters", {"max-bandwidth": 0})
            info = await _wait_end(source)
            total_s = time.perf_counter() - started
            records = await source.execute("x-query-migration-records", {"role": "source"})
    finally:
        await proxy.close()
    ram = info.get("ram", {})
    assert isinstance(ram, dict)
    sent = int(ram.get("transferred", 0))
    return {
        "status": info.get("status"),
        "total_s": total_s,
        "sent_bytes": sent,
        "dirtied_bytes": _dirtied_bytes(records),
        "breaks": info.get("x-precopy-breaks", 0),
        "restart_mib": (sent_at_cut + pair.vm.ram_bytes) / MIB,
    }


async def _cut_mid_pass(source: QMPClient, proxy: FaultProxy, ram_bytes: int) -> int:
    """Once CUT_AT_FRACTION of RAM went: reset, refuse for CUT_S, heal; the bytes sent by then."""
    sent = 0
    for _ in range(100_000):  # polled: the figure is the source's own counter
        sent = await _transferred(source)
        if sent >= CUT_AT_FRACTION * ram_bytes:
            break
        await asyncio.sleep(0.005)
    refuse = proxy.add(parse_fault({"type": "refuse", "once": False}))
    proxy.reset_connections()
    await asyncio.sleep(CUT_S)
    proxy.remove(refuse.fault_id)
    return sent


async def _transferred(source: QMPClient) -> int:
    info = await source.execute("query-migrate")
    assert isinstance(info, dict)
    ram = info.get("ram", {})
    return int(ram.get("transferred", 0)) if isinstance(ram, dict) else 0


async def _wait_end(source: QMPClient, timeout_s: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = await source.execute("query-migrate")
        assert isinstance(info, dict)
        if info.get("status") in {"completed", "failed", "cancelled"}:
            return info
        await asyncio.sleep(0.05)
    return {"status": "timed out"}


def _dirtied_bytes(records: object) -> int:
    """Pages the guest wrote during the newest migration, from its per-pass record (pass 2 on)."""
    if not isinstance(records, list) or not records:
        return 0
    newest = records[-1]
    passes = newest.get("passes", []) if isinstance(newest, dict) else []
    pages = sum(int(p.get("dirtied-pages", 0)) for p in passes if int(p.get("pass", 0)) > 1)
    return pages * 4096
