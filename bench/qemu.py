"""QEMU side by side: the same sizes migrated by QEMU (TCG) and by livemig, in the same run.

The QEMU guest is bench/qemu_guest.asm, a boot sector of ours built with nasm: it enters long mode
and adds 1 to byte 0 of every page (once, for an idle guest whose pages are all non-zero; never,
for an all-zero guest; for ever, for a guest that dirties all of its RAM). QEMU runs with
``-accel tcg``, ``max-bandwidth`` raised to 100 GB/s, and its destination with ``-mem-prealloc``
(livemig's destination pre-faults its RAM too, inside its setup time; both figures compare the
time after setup). Each repetition migrates each size with QEMU, then with livemig.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from bench.common import GIB, MIB, ProcessUsage, Spread, gbps, header, ratio, say, table
from bench.harness import Migration, VmSpec, busy_row, migrate_over_qmp
from bench.throughput import migrate_idle, num
from netio import QMPClient, QMPConnectionError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from bench.common import Run
    from livemig.netns import Host

GUEST_SOURCE: Final = Path(__file__).with_name("qemu_guest.asm")
MODES: Final = {"zero": 0, "fill": 1, "ab": 2, "hotset": 3}  # hotset: 16 MiB from 2 MiB on
LOW_RAM_MAX: Final = 2 * GIB  # -machine pc,max-ram-below-4g=2G
HIGH_RAM_START: Final = 4 * GIB
QEMU_PARAMETERS: Final = {"max-bandwidth": 100_000_000_000, "downtime-limit": 300}
NETNS_PORT: Final = 7779  # the destination's port inside its network namespace

Row = dict[str, object]


def missing() -> str | None:
    """Why QEMU cannot run here, or None."""
    for tool in ("qemu-system-x86_64", "nasm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install qemu-system-x86 nasm)"
    return None


class QemuVm:
    """One QEMU process (source, or destination with -incoming), driven over a QMP socket."""

    def __init__(
        self,
        work: Path,
        name: str,
        image: Path,
        ram_mib: int,
        incoming_port: int | None = None,
        *,
        prefix: tuple[str, ...] = (),
        listen_host: str = "127.0.0.1",
        before_incoming: tuple[tuple[str, dict[str, object]], ...] = (),
    ) -> None:
        """`prefix` runs it elsewhere (``ip netns exec NS``); `listen_host`: where a destination
        listens (QMP stays a unix socket, which any namespace reaches); `before_incoming`: QMP
        commands a destination runs before `migrate-incoming` (QEMU wants multifd set there)."""
        self.work = work
        self.before_incoming = before_incoming
        self.name = name
        self.serial = work / f"{name}.serial"
        self.socket = work / f"{name}.qmp"
        disk = work / f"{name}.img"  # a copy each: no image lock shared between the two
        shutil.copyfile(image, disk)
        self.listen_host = listen_host
        self.command = [
            *prefix,
            "qemu-system-x86_64",
            "-machine",
            "pc,max-ram-below-4g=2G",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            f"{ram_mib}M",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            f"file:{self.serial}",
            "-drive",
            f"file={disk},format=raw,if=ide",
            "-qmp",
            f"unix:{self.socket},server=on,wait=off",
        ]
        self.incoming_port = incoming_port
        if incoming_port is not None:
            self.command += ["-incoming", "defer", "-mem-prealloc"]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def qmp_address(self) -> str:
        return f"unix:{self.socket}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Self:
        log = (self.work / f"{self.name}.log").open("wb")
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._wait(self.socket.exists, 120.0, "its QMP socket")
        if self.incoming_port is not None:
            # Listening is set up when migrate-incoming returns: the source may connect then.
            uri = f"tcp:{self.listen_host}:{self.incoming_port}"
            for command, arguments in self.before_incoming:
                asyncio.run(_execute(self.qmp_address, command, arguments))
            asyncio.run(_execute(self.qmp_address, "migrate-incoming", {"uri": uri}))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait_serial(self, text: bytes, timeout_s: float) -> None:
        self._wait(
            lambda: self.serial.exists() and text in self.serial.read_bytes(),
            timeout_s,
            f"{text!r} on its serial port",
        )

    def _wait(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.process is not None and self.process.poll() is not None:
                log = (self.work / f"{self.name}.log").read_text(errors="replace")
                raise RuntimeError(f"QEMU {self.name} exited: {log[-500:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"QEMU {self.name}: no {what} within {timeout_s} s")
            time.sleep(0.02)


async def _execute(address: str, command: str, arguments: dict[str, object]) -> None:
    # QEMU creates its QMP socket file a moment before it listens on it (and much longer before,
    # on a loaded machine with -mem-prealloc): retry a refused connection for a while.
    deadline = time.monotonic() + 120.0
    while True:
        try:
            client = await QMPClient.connect(address, timeout_s=120.0)
        except QMPConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        async with client as qmp:
            await qmp.execute(command, arguments)
            return


def build_guest(work: Path, mode: str, ram_mib: int) -> Path:
    """Assemble the guest for a RAM size (it writes [2 MiB, low end) and [4 GiB, high end))."""
    ram = ram_mib * MIB
    low_end = min(ram, LOW_RAM_MAX)
    high_end = HIGH_RAM_START + max(0, ram - LOW_RAM_MAX)
    image = work / f"guest-{mode}-{ram_mib}.img"
    subprocess.run(
        [
            "nasm",
            "-f",
            "bin",
            f"-DMODE={MODES[mode]}",
            f"-DLOW_END={low_end:#x}",
            f"-DHIGH_END={high_end:#x}",
            "-o",
            str(image),
            str(GUEST_SOURCE),
        ],
        check=True,
    )
    return image


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def qemu_migration(
    work: Path,
    mode: str,
    ram_mib: int,
    *,
    timeout_s: float = 120.0,
    capabilities: tuple[str, ...] = (),
    sample_every_s: float | None = None,
    parameters: Mapping[str, object] | None = None,
    hosts: tuple[Host, Host] | None = None,
) -> Migration:
    """Boot a QEMU guest, wait for its first pass, migrate it to a second QEMU.

    `parameters` go over QEMU_PARAMETERS. With `hosts` (network namespaces), source and
    destination run in them and the destination gets the capabilities and parameters before
    `migrate-incoming` (QEMU wants multifd set on both ends).
    """
    image = build_guest(work, mode, ram_mib)
    parameters = {**QEMU_PARAMETERS, **(parameters or {})}
    places: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    dest_address, port = "127.0.0.1", free_port()
    setup: tuple[tuple[str, dict[str, object]], ...] = ()
    if hosts is not None:
        places = (tuple(hosts[0].exec_prefix()), tuple(hosts[1].exec_prefix()))
        dest_address, port = hosts[1].address, NETNS_PORT
        caps = [{"capability": name, "state": True} for name in capabilities]
        setup = (
            ("migrate-set-capabilities", {"capabilities": caps}),
            ("migrate-set-parameters", parameters),
        )
    with (
        QemuVm(work, f"src-{mode}-{ram_mib}", image, ram_mib, prefix=places[0]) as source,
        QemuVm(
            work,
            f"dst-{mode}-{ram_mib}",
            image,
            ram_mib,
            incoming_port=port,
            prefix=places[1],
            listen_host=dest_address,
            before_incoming=setup,
        ) as dest,
    ):
        source.wait_serial(b"F", 120.0)
        before = ProcessUsage.of(source.pid), ProcessUsage.of(dest.pid)
        started = time.perf_counter()
        migration = asyncio.run(
            migrate_over_qmp(
                source.qmp_address,
                f"tcp:{dest_address}:{port}",
                parameters,
                timeout_s,
                sample_every_s,
                capabilities,
            )
        )
        migration.wall_s = time.perf_counter() - started
        after = ProcessUsage.of(source.pid), ProcessUsage.of(dest.pid)
        migration.source_cpu_s = after[0].cpu_s - before[0].cpu_s
        migration.dest_cpu_s = after[1].cpu_s - before[1].cpu_s
        migration.source_usage, migration.dest_usage = after
    return migration


def _qemu_row(migration: Migration, mode: str, ram_mib: int) -> Row:
    transferred = migration.ram("transferred")
    return {
        "mode": mode,
        "ram_mib": ram_mib,
        "status": migration.status,
        "total_ms": migration.ms("total-time"),
        "setup_ms": migration.ms("setup-time"),
        "downtime_ms": migration.ms("downtime"),
        "transferred_bytes": transferred,
        "throughput_gbps": gbps(transferred, migration.transfer_s),
        "effective_gbps": gbps(ram_mib * MIB, migration.ms("total-time") / 1000.0),
        "effective_after_setup_gbps": gbps(ram_mib * MIB, migration.transfer_s),
        "source_cpu_s": migration.source_cpu_s,
        "dest_cpu_s": migration.dest_cpu_s,
    }


# ---------------------------------------------------------------------------------- figure


def qemu(run: Run) -> dict[str, object]:
    header("QEMU side by side (TCG, our boot-sector guest), same sizes, same run")
    reason = missing()
    if reason is not None:
        say(f"  skipped: {reason}")
        return {"skipped": reason}
    with tempfile.TemporaryDirectory(prefix="livemig-bench-qemu-") as tmp:
        work = Path(tmp)
        idle = _side_by_side(run, work, "fill", "random", run.pick((256, 1024, 4096), (256,)))
        zero = _side_by_side(run, work, "zero", "zero", run.pick((1024, 4096), (256,)))
        busy = _busy(run, work)
    return {"idle": idle, "zero": zero, "busy": busy}


def _side_by_side(
    run: Run, work: Path, mode: str, fill: str, sizes: tuple[int, ...]
) -> dict[str, object]:
    pairs: dict[int, list[tuple[Row, Row]]] = {size: [] for size in sizes}
    for _ in range(run.pick(2, 1)):
        for size in sizes:
            theirs = _qemu_row(qemu_migration(work, mode, size), mode, size)
            ours = migrate_idle(run, VmSpec(ram_mib=size, fill=fill), math.nan)
            pairs[size].append((theirs, ours))
    # Both after setup: QEMU's destination pre-faults (-mem-prealloc) before the migration
    # starts, livemig's within its setup time.
    key = "throughput_gbps" if mode == "fill" else "effective_after_setup_gbps"
    summary = {size: _compare(found, key) for size, found in pairs.items()}
    say(f"  {mode} guest ({key}):")
    table(
        ["RAM", "QEMU", "livemig", "livemig / QEMU", "QEMU total ms", "livemig total ms"],
        [
            [
                f"{size} MiB",
                s["qemu"].text(".2f"),
                s["livemig"].text(".2f"),
                s["ratio"].text(".2f"),
                s["qemu_total_ms"].text(),
                s["livemig_total_ms"].text(),
            ]
            for size, s in summary.items()
        ],
    )
    runs = [{"ram_mib": size, "qemu": q, "livemig": o} for size, f in pairs.items() for q, o in f]
    return {"metric": key, "by_size": summary, "runs": runs}


def _compare(pairs: list[tuple[Row, Row]], key: str) -> dict[str, Spread]:
    return {
        "qemu": Spread.of([num(q, key) for q, _ in pairs]),
        "livemig": Spread.of([num(o, key) for _, o in pairs]),
        "ratio": Spread.of([ratio(num(o, key), num(q, key)) for q, o in pairs]),
        "qemu_total_ms": Spread.of([num(q, "total_ms") for q, _ in pairs]),
        "livemig_total_ms": Spread.of([num(o, "total_ms") for _, o in pairs]),
        "qemu_setup_ms": Spread.of([num(q, "setup_ms") for q, _ in pairs]),
        "livemig_setup_ms": Spread.of([num(o, "setup_ms") for _, o in pairs]),
    }


def _busy(run: Run, work: Path) -> dict[str, object]:
    """QEMU's own figure for the busy guest: 1 GiB of RAM rewritten over and over.

    Its auto-converge migration runs in the busy figure, next to livemig's throttles.
    """
    ram_mib = run.pick(1024, 64)
    cases = {"plain": ((), run.pick(10.0, 2.0))}
    results = {}
    for name, (caps, timeout_s) in cases.items():
        migration = qemu_migration(
            work, "ab", ram_mib, timeout_s=timeout_s, capabilities=caps, sample_every_s=0.25
        )
        results[name] = busy_row(migration, timeout_s)
        row = results[name]
        say(
            f"  QEMU busy {ram_mib} MiB ab guest, {name}: {row['status']} after "
            f"{num(row, 'total_ms') / 1000:.1f} s, {num(row, 'transferred_bytes') / 1e9:.1f} GB "
            f"sent, downtime {num(row, 'downtime_ms'):.0f} ms"
        )
    return {"ram_mib": ram_mib, "cases": results}
