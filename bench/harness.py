"""Real daemons on loopback, driven over QMP: start a pair, migrate, collect the figures.

A `Pair` starts a source daemon (booting the VM of a `VmSpec`) and a destination daemon, both
listening for incoming migrations, so one pair can migrate the VM back and forth (A->B->A) without
paying for daemon start-up and boot again. Each `Pair.migrate` goes from whichever side holds the
VM to the other and returns a `Migration`: the final `query-migrate`, optional samples of it taken
while it ran, and the CPU time and memory of both daemons.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Self

from bench.common import GIB, MIB, ProcessUsage, gbps, say
from livemig.daemons import DaemonProcess, start_daemon
from netio import QMPClient, QMPCommandError, QMPTimeoutError
from vmsim import MachineConfig, replay

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from types import TracebackType

FINAL: Final = frozenset({"completed", "failed", "cancelled", "in-doubt"})
SETTLED: Final = FINAL - {"in-doubt"}
IN_DOUBT_WAIT_S: Final = 30.0  # x-resolve-interval-ms is 1 s: an in-doubt end settles in seconds
_LISTEN: Final = ["--qmp", "tcp:127.0.0.1:0", "--incoming", "tcp:127.0.0.1:0"]


@dataclass(frozen=True, kw_only=True)
class VmSpec:
    """The source VM: the source daemon's machine flags."""

    ram_mib: int
    fill: str = "random"
    workload: str = "idle"
    dirty_rate: int = 0
    seed: int = 1
    tick_hz: int = 1000
    extra: tuple[tuple[str, str], ...] = ()

    def args(self) -> list[str]:
        args = ["--ram-mib", str(self.ram_mib), "--fill", self.fill, "--workload", self.workload]
        args += ["--dirty-rate", str(self.dirty_rate), "--seed", str(self.seed)]
        args += ["--tick-hz", str(self.tick_hz)]
        for flag, value in self.extra:
            args += [f"--{flag}", value]
        return args

    @property
    def ram_bytes(self) -> int:
        return self.ram_mib * MIB


@dataclass(kw_only=True)
class Migration:
    """One migration's outcome as the source reported it, plus what the daemons used."""

    info: dict[str, object]
    wall_s: float
    samples: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    source_cpu_s: float = 0.0
    dest_cpu_s: float = 0.0
    source_usage: ProcessUsage | None = None
    dest_usage: ProcessUsage | None = None

    @property
    def status(self) -> str:
        return str(self.info.get("status"))

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def ms(self, key: str) -> float:
        value = self.info.get(key)
        return float(value) if isinstance(value, int | float) else float("nan")

    def ram(self, key: str) -> float:
        ram = self.info.get("ram")
        value = ram.get(key) if isinstance(ram, dict) else None
        return float(value) if isinstance(value, int | float) else float("nan")

    @property
    def transfer_s(self) -> float:
        """Total time minus setup time (the destination's RAM pre-fault is in the setup)."""
        return (self.ms("total-time") - self.ms("setup-time")) / 1000.0

    @property
    def last_active(self) -> dict[str, object]:
        """The last sample taken while active (a cancelled migration reports no counters)."""
        for _, info in reversed(self.samples):
            if isinstance(info.get("ram"), dict):
                return info
        return self.info

    @property
    def breakdown(self) -> dict[str, int]:
        value = self.info.get("x-downtime-breakdown")
        return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


class Pair:
    """A source and a destination daemon; the VM migrates between them."""

    def __init__(
        self,
        vm: VmSpec,
        *,
        log_dir: Path | None = None,
        code_tree: Path | None = None,
        daemon_args: tuple[str, ...] = (),
        dest_args: tuple[str, ...] = (),
    ) -> None:
        """Daemons of `vm`; `code_tree` runs them from another checkout (its packages first);
        `daemon_args` go to both daemons (`--metrics tcp:127.0.0.1:0`, say), `dest_args` to the
        destination only."""
        self.vm = vm
        self._daemon_args = list(daemon_args)
        self._dest_args = list(dest_args)
        self._log_dir = log_dir
        self._env = {"PYTHONPATH": str(code_tree)} if code_tree is not None else None
        self.daemons: list[DaemonProcess] = []
        self.holder = 0  # index of the daemon that runs the VM

    def __enter__(self) -> Self:
        try:
            extra = self._daemon_args
            self.daemons.append(
                self._start("source_daemon", [*_LISTEN, *extra, *self.vm.args()], "src")
            )
            dest = [*_LISTEN, *extra, *self._dest_args]
            self.daemons.append(self._start("dest_daemon", dest, "dst"))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()

    def _start(self, module: str, args: list[str], name: str) -> DaemonProcess:
        log_path = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self._log_dir / f"{name}-{time.strftime('%H%M%S')}-{id(self):x}.log"
        return start_daemon(module, args, name=name, log_path=log_path, env=self._env)

    @property
    def source(self) -> DaemonProcess:
        return self.daemons[self.holder]

    @property
    def dest(self) -> DaemonProcess:
        return self.daemons[1 - self.holder]

    def usage(self) -> tuple[ProcessUsage, ProcessUsage]:
        """(source, destination) usage now."""
        return ProcessUsage.of(self.source.process.pid), ProcessUsage.of(self.dest.process.pid)

    def migrate(
        self,
        *,
        parameters: Mapping[str, object] | None = None,
        timeout_s: float = 120.0,
        sample_every_s: float | None = None,
        capabilities: tuple[str, ...] = (),
    ) -> Migration:
        """Migrate the VM to the other daemon (and cancel it after timeout_s)."""
        source_before, dest_before = self.usage()
        started = time.perf_counter()
        result = asyncio.run(
            migrate_over_qmp(
                self.source.qmp_address,
                self.dest.incoming_uri,
                parameters or {},
                timeout_s,
                sample_every_s,
                capabilities,
            )
        )
        result.wall_s = time.perf_counter() - started
        source_after, dest_after = self.usage()
        result.source_cpu_s = source_after.cpu_s - source_before.cpu_s
        result.dest_cpu_s = dest_after.cpu_s - dest_before.cpu_s
        result.source_usage, result.dest_usage = source_after, dest_after
        if result.completed:
            self.holder = 1 - self.holder
        return result

    def replay_matches(self) -> bool:
        """Stop the VM where it runs now; whether its digest equals a replay that never moved.

        The oracle of every migration test (docs/architecture.md), for benchmarks that change
        how the guest runs (throttling): it changes when ticks run, never what they do.
        """
        return asyncio.run(_replay_matches(self.source.qmp_address))

    def wait_vm_running(self, timeout_s: float = 10.0) -> None:
        """Wait until the VM runs where it is now (after a migration it resumes there)."""
        asyncio.run(_wait_running(self.source.qmp_address, timeout_s))


async def migrate_over_qmp(
    source_qmp: str,
    uri: str,
    parameters: Mapping[str, object],
    timeout_s: float,
    sample_every_s: float | None,
    capabilities: tuple[str, ...] = (),
) -> Migration:
    """Set parameters, `migrate`, follow until the end (cancel after timeout_s); QEMU too."""
    async with await QMPClient.connect(source_qmp) as qmp:
        caps = [{"capability": name, "state": True} for name in ("events", *capabilities)]
        await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
        if parameters:
            await qmp.execute("migrate-set-parameters", dict(parameters))
        await qmp.execute("migrate", {"uri": uri})
        samples: list[tuple[float, dict[str, object]]] = []
        deadline = time.monotonic() + timeout_s
        if not await _follow(qmp, samples, sample_every_s, deadline):
            with contextlib.suppress(QMPCommandError):
                await qmp.execute("migrate_cancel")
            await _follow(qmp, samples, sample_every_s, math.inf)
        info = await _query(qmp)
        if info.get("status") == "in-doubt":  # a cancel that met the handover: wait for its end
            await _follow(qmp, samples, None, time.monotonic() + IN_DOUBT_WAIT_S, SETTLED)
            info = await _query(qmp)
        return Migration(info=info, wall_s=0.0, samples=samples)


async def _follow(
    qmp: QMPClient,
    samples: list[tuple[float, dict[str, object]]],
    every_s: float | None,
    deadline: float,
    final: frozenset[str] = FINAL,
) -> bool:
    """Until the migration ends (True) or the deadline (False): sample, or wait for events.

    Never cancels a request in flight (its reply would arrive unmatched).
    """
    started = time.perf_counter()
    while True:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            return False
        if every_s is None:
            with contextlib.suppress(QMPTimeoutError):
                await qmp.wait_event(
                    "MIGRATION", min(1.0, left_s), lambda e: e.data.get("status") in final
                )
        else:
            await asyncio.sleep(min(every_s, left_s))
        info = await _query(qmp)
        if every_s is not None:
            samples.append((time.perf_counter() - started, info))
        if info.get("status") in final:
            return True


async def _query(qmp: QMPClient) -> dict[str, object]:
    info = await qmp.execute("query-migrate")
    if not isinstance(info, dict):
        raise TypeError(f"query-migrate returned {info!r}")
    return info


async def _replay_matches(qmp_address: str) -> bool:
    async with await QMPClient.connect(qmp_address) as qmp:
        await qmp.execute("stop")
        vm = await qmp.execute("x-query-vm")
    if not isinstance(vm, dict) or not isinstance(vm.get("config"), dict):
        raise TypeError(f"x-query-vm returned {vm!r}")
    config = MachineConfig.from_dict(vm["config"])
    digest = await asyncio.to_thread(replay, config, int(vm["ticks"]))
    return bool(digest == vm["digest"])


async def _wait_running(qmp_address: str, timeout_s: float) -> None:
    async with await QMPClient.connect(qmp_address) as qmp, asyncio.timeout(timeout_s):
        while True:
            status = await qmp.execute("query-status")
            if isinstance(status, dict) and status.get("status") == "running":
                return
            await asyncio.sleep(0.01)


def per_iteration(samples: list[tuple[float, dict[str, object]]]) -> list[dict[str, float]]:
    """One row per dirty-sync count seen while sampling (the first sample after each sync).

    Rows carry the time, the bytes remaining after the sync, the bytes sent so far, the guest's
    page writes per second, and the bytes the sync newly found dirty, estimated from the
    samples around it: the rise of `remaining` plus what was sent meanwhile (sending lowers
    it). QEMU's dirty-pages-rate is updated once a second: too coarse for short iterations.
    """
    rows: list[dict[str, float]] = []
    previous: tuple[float, dict[str, float]] | None = None
    for at_s, info in samples:
        ram = _counters(info)
        if ram is None:
            continue
        if rows and rows[-1]["iteration"] == ram["dirty-sync-count"]:
            previous = (at_s, ram)
            continue
        dirtied = math.nan
        rate = math.nan
        if previous is not None and rows:
            sent = ram["transferred"] - previous[1]["transferred"]
            dirtied = max(0.0, ram["remaining"] - previous[1]["remaining"] + sent)
            rate = dirtied / max(at_s - rows[-1]["t_s"], 1e-3)
        rows.append(
            {
                "iteration": ram["dirty-sync-count"],
                "t_s": at_s,
                "remaining_bytes": ram["remaining"],
                "transferred_bytes": ram["transferred"],
                "dirtied_bytes": dirtied,
                "dirty_bytes_per_s": rate,
                "page_writes_per_s": ram.get("x-page-writes-per-second", math.nan),
                "mbps": ram.get("mbps", math.nan),
            }
        )
        previous = (at_s, ram)
    return rows


def _counters(info: dict[str, object]) -> dict[str, float] | None:
    ram = info.get("ram")
    if not isinstance(ram, dict) or "remaining" not in ram:
        return None
    return {str(k): float(v) for k, v in ram.items() if isinstance(v, int | float)}


def busy_row(migration: Migration, timeout_s: float) -> dict[str, float | str]:
    """What a migration that may never converge did: status, time, bytes, downtime."""
    last = migration.last_active
    ram = last.get("ram")
    counters = ram if isinstance(ram, dict) else {}
    completed = migration.completed
    return {
        "status": migration.status,
        "timeout_s": timeout_s,
        "total_ms": migration.ms("total-time") if completed else migration.wall_s * 1000.0,
        "downtime_ms": migration.ms("downtime"),
        "transferred_bytes": float(counters.get("transferred", math.nan)),
        "dirty_syncs": float(counters.get("dirty-sync-count", math.nan)),
        "expected_downtime_ms": float(str(last.get("expected-downtime", "nan"))),
        "mbps": float(counters.get("mbps", math.nan)),
    }


def rate_row(migration: Migration, label: str, **fields: object) -> dict[str, object]:
    """One migration's throughput and CPU per GiB per side, said and returned with `fields`.

    Throughput is bytes sent / (total - setup) in GB/s; CPU per GiB is each daemon's process
    CPU time over the migration per GiB sent.
    """
    gib = migration.ram("transferred") / GIB
    row: dict[str, object] = {
        **fields,
        "status": migration.status,
        "gbps": gbps(migration.ram("transferred"), migration.transfer_s),
        "source_cpu_s_per_gib": migration.source_cpu_s / gib if gib else float("nan"),
        "dest_cpu_s_per_gib": migration.dest_cpu_s / gib if gib else float("nan"),
    }
    say(
        f"    {label}: {migration.status}, {row['gbps']:.2f} GB/s, CPU per GiB source "
        f"{row['source_cpu_s_per_gib']:.2f} s, destination {row['dest_cpu_s_per_gib']:.2f} s"
    )
    return row


def row_value(rows: list[dict[str, object]], key: str, **match: object) -> float:
    """`key` of the row whose fields equal `match` (NaN if not a number)."""
    row = next(r for r in rows if all(r[k] == v for k, v in match.items()))
    value = row[key]
    return float(value) if isinstance(value, int | float) else float("nan")
