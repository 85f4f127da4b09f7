"""Slow links: multifd with zstd on a shaped link between network namespaces, against plain.

``python -m bench links`` (root: network namespaces). Two hosts on a bridge; the source
host's egress is shaped with a token bucket (tc tbf, as `livemig fault bandwidth` does) to
LINK_MBIT. A raw TCP stream across the same link gives the baseline rate of this run. Then an
idle guest migrates once per (fill, mode): one stream of raw pages (`plain`), and multifd (2
channels) with `multifd-compression zstd`, each from a freshly started source, digest-checked.

Where QEMU is installed, QEMU 7.2 migrates a guest of its own over the same 100 Mbit/s link with
plain precopy, XBZRLE and multifd + zstd (`bench/links_qemu.py`; not a like-for-like race: its
pages hold one byte each).

Goals (issue 13): with the `mixed` fill, zstd moves RAM at >= 2.5x the link rate (RAM size /
total time against the raw stream's rate); with the `random` fill (incompressible), zstd costs
<= 5 % more time than plain (its pages go raw).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Final

from bench.common import GIB, MIB, ProcessUsage, header, say, verdict, warm_memory
from bench.harness import VmSpec, migrate_over_qmp
from bench.links_qemu import qemu_hotset
from livemig.netns import NetnsRig, netns_unavailable, remove_stale_rigs

if TYPE_CHECKING:
    from pathlib import Path

    from bench.common import Run
    from bench.harness import Migration
    from livemig.daemons import DaemonProcess
    from livemig.netns import Host

LINK_MBIT: Final = 1000
MIXED_GOAL: Final = 2.5
RANDOM_GOAL: Final = 1.05
_QMP_PORT: Final = 4444
_MIGRATION_PORT: Final = 7777
_STREAM_PORT: Final = 7778
HOTSET_LINK_MBIT: Final = 100
HOTSET_TIMEOUT_S: Final = 120.0
_MODES: Final[dict[str, tuple[dict[str, object], tuple[str, ...]]]] = {
    "plain": ({}, ()),
    "zstd": ({"multifd-channels": 2, "multifd-compression": "zstd"}, ("multifd",)),
    "xbzrle": ({"xbzrle-cache-size": 1 << 30}, ("xbzrle",)),
}


def links(run: Run) -> dict[str, object]:
    header(f"slow links: multifd + zstd on a {LINK_MBIT} Mbit/s link against plain")
    reason = netns_unavailable()
    if reason is not None:
        say(f"  skipped: {reason}")
        return {"skipped": reason}
    ram_mib = run.pick(1024, 96)
    warm_memory(2 * ram_mib * MIB + 512 * MIB)
    remove_stale_rigs()
    rig = NetnsRig(tag=secrets.token_hex(2), subnet=random.randint(1, 250))
    try:
        rig.up(2)
        _shape(rig.hosts[0], LINK_MBIT)
        link_bytes_per_s = _raw_stream_rate(rig, run.pick(256, 32) * MIB)
        say(f"  raw TCP stream over the shaped link: {link_bytes_per_s / 1e6:.0f} MB/s")
        rows = [
            _one(run, rig, VmSpec(ram_mib=ram_mib, fill=fill), mode, link_bytes_per_s)
            for fill in ("mixed", "random")
            for mode in ("plain", "zstd")
        ]
        hotset = _hotset(run, rig)
    finally:
        rig.down()
    return {**_verdicts(rows, ram_mib, link_bytes_per_s), "hotset": hotset}


def _hotset(run: Run, rig: NetnsRig) -> dict[str, object]:
    """A busy guest on 100 Mbit/s: plain precopy cannot converge it; XBZRLE or zstd can."""
    vm = VmSpec(ram_mib=run.pick(512, 64), fill="mixed", workload="hotset", dirty_rate=10_000)
    say(f"  {vm.ram_mib} MiB hotset guest (16 MiB hot, 10,000 writes/s) on {HOTSET_LINK_MBIT} "
        "Mbit/s:")  # fmt: skip
    _shape(rig.hosts[0], HOTSET_LINK_MBIT)
    link = _raw_stream_rate(rig, run.pick(64, 8) * MIB)
    say(f"  raw TCP stream over the shaped link: {link / 1e6:.1f} MB/s")
    timeout_s = run.pick(HOTSET_TIMEOUT_S, 30.0)
    rows = [_one(run, rig, vm, mode, link, timeout_s=timeout_s) for mode in _MODES]
    done = {str(r["mode"]) for r in rows if r["status"] == "completed"}
    met = "plain" not in done and bool(done & {"xbzrle", "zstd"})
    say(f"  completed: {', '.join(sorted(done)) or 'none'}; plain does not and XBZRLE or zstd "
        f"does: {verdict(met)}")  # fmt: skip
    qemu_rows = [] if run.quick else qemu_hotset(rig, vm.ram_mib, link, timeout_s)
    return {"ram_mib": vm.ram_mib, "raw_stream_bytes_per_s": round(link), "runs": rows,
            "qemu_runs": qemu_rows,
            "goals": {"hotset_converges_with_xbzrle_or_zstd": {"met": met}}}  # fmt: skip


def _verdicts(rows: list[dict[str, object]], ram_mib: int, link: float) -> dict[str, object]:
    def cell(fill: str, mode: str, key: str) -> float:
        row = next(r for r in rows if r["fill"] == fill and r["mode"] == mode)
        return float(str(row[key]))

    mixed = cell("mixed", "zstd", "link_multiple")
    random_cost = cell("random", "zstd", "total_s") / cell("random", "plain", "total_s")
    completed = all(r["status"] == "completed" for r in rows)
    say(f"  mixed fill, zstd: RAM moved at {mixed:.2f}x the link rate; goal >= {MIXED_GOAL}: "
        f"{verdict(mixed >= MIXED_GOAL)}")  # fmt: skip
    say(f"  random fill, zstd / plain time: {random_cost:.3f}; goal <= {RANDOM_GOAL}: "
        f"{verdict(random_cost <= RANDOM_GOAL)}")  # fmt: skip
    mixed_met = completed and mixed >= MIXED_GOAL
    random_met = completed and random_cost <= RANDOM_GOAL
    return {
        "ram_mib": ram_mib,
        "link_mbit": LINK_MBIT,
        "raw_stream_bytes_per_s": round(link),
        "runs": rows,
        "goals": {
            "mixed_zstd_at_least_2_5x_link": {"met": mixed_met, "multiple": mixed},
            "random_zstd_at_most_5_percent_slower": {"met": random_met, "ratio": random_cost},
        },
    }


def _one(
    run: Run, rig: NetnsRig, vm: VmSpec, mode: str, link: float, *, timeout_s: float = 600.0
) -> dict[str, object]:
    source_host, dest_host = rig.hosts
    logs = run.settings.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"links-{vm.workload}-{vm.fill}-{mode}"
    daemons = [
        _start(rig, source_host, "source_daemon", vm.args(), logs / f"{tag}-src.log"),
        _start(rig, dest_host, "dest_daemon", _dest_ram(vm), logs / f"{tag}-dst.log"),
    ]
    try:
        parameters, capabilities = _MODES[mode]
        before = [ProcessUsage.of(daemon.process.pid).cpu_s for daemon in daemons]
        started = time.perf_counter()
        migration = asyncio.run(
            migrate_over_qmp(
                f"tcp:{source_host.address}:{_QMP_PORT}",
                f"tcp:{dest_host.address}:{_MIGRATION_PORT}",
                parameters,
                timeout_s,
                None,
                (*capabilities, "x-digest-check"),
            )
        )
        migration.wall_s = time.perf_counter() - started
        after = [ProcessUsage.of(daemon.process.pid).cpu_s for daemon in daemons]
    finally:
        for daemon in daemons:
            daemon.stop()
    row = _row(vm, mode, migration, link)
    gib = vm.ram_bytes / GIB
    row["source_cpu_s_per_gib"] = round((after[0] - before[0]) / gib, 3)
    row["dest_cpu_s_per_gib"] = round((after[1] - before[1]) / gib, 3)
    say(f"      CPU per GiB of RAM: source {row['source_cpu_s_per_gib']:.2f} s, "
        f"destination {row['dest_cpu_s_per_gib']:.2f} s")  # fmt: skip
    return row


def _row(vm: VmSpec, mode: str, migration: Migration, link: float) -> dict[str, object]:
    total_s = float(str(migration.info.get("total-time", 0))) / 1000
    moved = vm.ram_bytes / total_s / link if total_s else float("nan")
    row: dict[str, object] = {
        "fill": vm.fill,
        "mode": mode,
        "status": migration.status,
        "total_s": round(total_s, 3),
        "transferred_bytes": migration.ram("transferred"),
        "link_multiple": round(moved, 3),
        "compression_ratio": migration.ram("x-compression-ratio") if mode != "plain" else 1.0,
    }
    if migration.status != "completed":  # cancelled at the timeout: QEMU reports no figures
        row["total_s"] = round(migration.wall_s, 3)
        say(f"    {vm.fill} {mode}: {migration.status} after {migration.wall_s:.0f} s "
            "(it did not converge)")  # fmt: skip
        return row
    sent_mib = migration.ram("transferred") / MIB
    say(f"    {vm.fill} {mode}: {migration.status} in {total_s:.2f} s, {sent_mib:.0f} MiB sent, "
        f"RAM at {moved:.2f}x the link")  # fmt: skip
    return row


def _dest_ram(vm: VmSpec) -> list[str]:
    """As QEMU's destination is started (-m, -mem-prealloc): RAM faulted in before `migrate`."""
    return ["--mem-prealloc", "--ram-mib", str(vm.ram_mib)]


def _start(rig: NetnsRig, host: Host, module: str, extra: list[str], log: Path) -> DaemonProcess:
    args = ["--qmp", f"tcp:{host.address}:{_QMP_PORT}"]
    args += ["--incoming", f"tcp:{host.address}:{_MIGRATION_PORT}", *extra]
    return rig.start(host, module, args, name=module, log_path=log)


def _shape(host: Host, mbit: int) -> None:
    """A token bucket on the host's egress; its burst fits a 64 KiB GSO segment many times."""
    burst_bytes = max(256 * 1024, mbit * 1_000_000 // 8 // 100)
    tbf = ["tbf", "rate", f"{mbit}mbit", "burst", str(burst_bytes), "latency", "400ms"]
    command = [*host.exec_prefix(), "tc", "qdisc", "replace", "dev", "eth0", "root", *tbf]
    subprocess.run(command, check=True, capture_output=True)


_RECEIVER: Final = """
import socket, sys, time
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = server.accept()
buffer, total, started = bytearray(1 << 20), 0, None
while (n := conn.recv_into(buffer)):
    started = started or time.perf_counter()
    total += n
print(total / (time.perf_counter() - started), flush=True)
"""
_SENDER: Final = """
import os, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
chunk, left = os.urandom(1 << 20), int(sys.argv[3])
while left > 0:
    sock.sendall(chunk)
    left -= len(chunk)
sock.close()
"""


def _raw_stream_rate(rig: NetnsRig, nbytes: int) -> float:
    """Bytes per second of one raw TCP stream from the source host to the destination host."""
    source_host, dest_host = rig.hosts
    address = [dest_host.address, str(_STREAM_PORT)]
    receiver = subprocess.Popen(
        [*dest_host.exec_prefix(), sys.executable, "-c", _RECEIVER, *address],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None
    receiver.stdout.readline()  # "ready"
    subprocess.run(
        [*source_host.exec_prefix(), sys.executable, "-c", _SENDER, *address, str(nbytes)],
        check=True,
    )
    rate = float(receiver.stdout.readline())
    receiver.wait(timeout=30)
    return rate
