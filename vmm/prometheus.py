"""Prometheus metrics of one daemon: its newest migration, migration counts, and its VM.

`--metrics tcp:HOST:PORT` serves them at `/metrics` in the text exposition format, on the
daemon's own event loop (no thread): each scrape reads the same state `query-migrate` does,
when it happens, so a scrape never races a migration. Names follow Prometheus' rules (base
units in the name: `_bytes`, `_seconds`, `_ratio`; `_total` for counters); labels stay few:
the daemon's role, the VM's UUID, and for migrations the side (source or destination) and the
outcome, never a migration id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import TYPE_CHECKING, Final

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from migration import MigrationStatus
from netio import TcpAddress, parse_qmp_address

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from prometheus_client.core import Metric

    from vmm.daemon import Vmm

log = structlog.get_logger("vmm.prometheus")

STARTED: Final = "setup"
OUTCOMES: Final = ("completed", "failed", "cancelled", "in-doubt")
SIDES: Final = ("source", "destination")
MAX_REQUEST_HEAD_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 5.0
PAGE_BYTES: Final = 4096


class MigrationCounts:
    """Migrations this daemon started and ended, by side and outcome, and failures by cause."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.ended: Counter[tuple[str, str]] = Counter()
        self.failed: Counter[tuple[str, str]] = Counter()

    def record(self, side: str, status: object) -> None:
        """A MIGRATION event of `side` (source or destination) reached `status`."""
        if side not in SIDES:
            return
        if status == STARTED:
            self.started[side] += 1
        elif status in OUTCOMES:
            self.ended[side, str(status)] += 1

    def record_failure(self, side: str, cause: str) -> None:
        """A migration of `side` failed for `cause` (a short label from a fixed set)."""
        if side in SIDES:
            self.failed[side, cause] += 1


class DaemonCollector:
    """A prometheus_client collector reading the daemon's state at each scrape."""

    def __init__(self, vmm: Vmm) -> None:
        self._vmm = vmm

    def collect(self) -> Iterator[Metric]:
        """Every family, with the daemon's labels."""
        vmm = self._vmm
        base = {"role": vmm.options.role, "vm_uuid": vmm.vm_uuid() or ""}
        yield from _counts(vmm.migration_counts, base)
        yield from _vm(vmm, base)
        side, info = vmm.newest_migration()
        if side is not None:
            yield from _migration(info, {**base, "side": side})


def _family(
    name: str, doc: str, labels: Mapping[str, str], value: float, *, unit: str = ""
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)
    family.add_metric(list(labels.values()), value)
    return family


def _counts(counts: MigrationCounts, base: Mapping[str, str]) -> Iterator[Metric]:
    started = CounterMetricFamily(
        "livemig_migrations_started", "Migrations begun, by side.", labels=[*base, "side"]
    )
    ended = CounterMetricFamily(
        "livemig_migrations_ended",
        "Migrations ended, by side and outcome (in-doubt counts when a migration enters it).",
        labels=[*base, "side", "outcome"],
    )
    failed = CounterMetricFamily(
        "livemig_migrations_failed",
        "Failed migrations, by side and cause (an error code's name, a timeout policy, "
        "shutdown, connection-lost, ...).",
        labels=[*base, "side", "cause"],
    )
    for side in SIDES:
        started.add_metric([*base.values(), side], counts.started[side])
        for outcome in OUTCOMES:
            ended.add_metric([*base.values(), side, outcome], counts.ended[side, outcome])
    for (side, cause), count in sorted(counts.failed.items()):
        failed.add_metric([*base.values(), side, cause], count)
    yield started
    yield ended
    yield failed


def _vm(vmm: Vmm, base: Mapping[str, str]) -> Iterator[Metric]:
    vm = vmm.vm
    running = vm is not None and vm.is_running and not vmm.migrated_away
    yield _family("livemig_vm_running", "1 when the VM runs on this daemon.", base, running)
    state = GaugeMetricFamily(
        "livemig_vm_runstate",
        "The VM's run state here (1 for the current one).",
        labels=[*base, "state"],
    )
    if vm is not None:
        state.add_metric([*base.values(), str(vm.runstate)], 1)
    yield state
    ticks_per_s = vm.ticks_per_second() if vm is not None else 0.0
    yield _family(
        "livemig_vm_guest_ticks_per_second",
        "Guest ticks the vCPUs ran per second.",
        base,
        ticks_per_s,
    )


_RAM_GAUGES: Final = (
    ("transferred", "livemig_migration_transferred_bytes", "Bytes sent or received so far.", 1.0),
    ("remaining", "livemig_migration_remaining_bytes", "Bytes still to send.", 1.0),
    ("total", "livemig_migration_ram_bytes", "Guest RAM size.", 1.0),
    (
        "dirty-pages-rate",
        "livemig_migration_dirty_rate_bytes_per_second",
        "Bytes the guest dirtied per second (last measurement).",
        float(PAGE_BYTES),
    ),
    (
        "mbps",
        "livemig_migration_bandwidth_bytes_per_second",
        "Bytes per second over the last bandwidth window.",
        1e6 / 8,
    ),
    ("dirty-sync-count", "livemig_migration_passes", "Dirty syncs (passes) so far.", 1.0),
    ("multifd-bytes", "livemig_migration_multifd_bytes", "Bytes sent on multifd channels.", 1.0),
    ("postcopy-bytes", "livemig_migration_postcopy_bytes", "Bytes sent after POSTCOPY_RUN.", 1.0),
    (
        "x-compression-ratio",
        "livemig_migration_compression_ratio",
        "Page bytes given to multifd-compression over what they went as.",
        1.0,
    ),
)
_XBZRLE_GAUGES: Final = (
    ("bytes", "livemig_migration_xbzrle_bytes", "XBZRLE delta bytes sent.", 1.0),
    ("pages", "livemig_migration_xbzrle_pages", "Pages sent as XBZRLE deltas.", 1.0),
    ("cache-miss-rate", "livemig_migration_xbzrle_cache_miss_ratio", "XBZRLE cache misses.", 1.0),
    ("overflow", "livemig_migration_xbzrle_overflow_pages", "Deltas no smaller than a page.", 1.0),
)
_REQUESTS_DOC: Final = "Page requests (REQ_PAGES) the destination's guest made."
_RAM_POSTCOPY_GAUGES: Final = (  # the source's count, in `ram` as in QEMU's MigrationStats
    ("postcopy-requests", "livemig_migration_postcopy_requests", _REQUESTS_DOC, 1.0),
)
_POSTCOPY_GAUGES: Final = (  # the destination's count
    (
        "x-postcopy-requests",
        "livemig_migration_postcopy_requests",
        "Page requests (REQ_PAGES) the destination's guest made.",
        1.0,
    ),
)
_TIME_GAUGES: Final = (  # milliseconds in query-migrate
    (
        "postcopy-blocktime",
        "livemig_migration_postcopy_blocktime_seconds",
        "Time the destination's vCPUs waited for pages not yet received.",
        1.0,
    ),
    ("total-time", "livemig_migration_total_seconds", "Time since the migration began.", 1.0),
    (
        "expected-downtime",
        "livemig_migration_expected_downtime_seconds",
        "Planned downtime.",
        1.0,
    ),
    (
        "downtime",
        "livemig_migration_downtime_seconds",
        "Measured downtime (once completed).",
        1.0,
    ),
)


def _migration(info: Mapping[str, object], labels: Mapping[str, str]) -> Iterator[Metric]:
    status = GaugeMetricFamily(
        "livemig_migration_status",
        "The newest migration's status (1 for the current one).",
        labels=[*labels, "status"],
    )
    current = str(info.get("status", "none"))
    for each in MigrationStatus:
        status.add_metric([*labels.values(), each.value], float(each.value == current))
    yield status
    yield from _gauges(_section(info, "ram"), _RAM_GAUGES + _RAM_POSTCOPY_GAUGES, labels)
    yield from _gauges(_section(info, "xbzrle-cache"), _XBZRLE_GAUGES, labels)
    yield from _gauges(info, _POSTCOPY_GAUGES, labels)
    yield from _gauges(info, _TIME_GAUGES, labels, per=1000.0)
    throttle = info.get("cpu-throttle-percentage")
    yield _family(
        "livemig_migration_cpu_throttle_ratio",
        "Share of each period the vCPUs sleep (auto-converge).",
        labels,
        float(throttle) / 100 if isinstance(throttle, int | float) else 0.0,
    )


Gauges = tuple[tuple[str, str, str, float], ...]


def _section(info: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = info.get(key)
    return value if isinstance(value, dict) else {}


def _gauges(
    values: Mapping[str, object],
    gauges: Gauges,
    labels: Mapping[str, str],
    *,
    per: float = 1.0,
) -> Iterator[Metric]:
    """One gauge per (key, name, doc, scale) whose key holds a number in `values`.

    The value is the number times `scale`, divided by `per` (ms to s: divided, so that 7 ms is
    exactly 7 / 1000 s, as the tests compare).
    """
    for key, name, doc, scale in gauges:
        if isinstance(value := values.get(key), int | float):
            yield _family(name, doc, labels, float(value) * scale / per)


class MetricsServer:
    """`/metrics` over HTTP/1.1 on the daemon's loop; bounded requests, one reply each."""

    def __init__(self, vmm: Vmm) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(vmm))
        self._servers: list[asyncio.Server] = []
        self.addresses: list[str] = []

    async def start(self, address: str) -> str:
        """Listen on `tcp:HOST:PORT` (port 0 picks one); return the address bound."""
        parsed = parse_qmp_address(address, listen=True)
        if not isinstance(parsed, TcpAddress):
            msg = f"--metrics takes tcp:HOST:PORT, not {address!r}"
            raise ValueError(msg)  # noqa: TRY004 - a bad option value, reported as such
        server = await asyncio.start_server(
            self._serve, parsed.host or None, parsed.port, limit=MAX_REQUEST_HEAD_BYTES
        )
        self._servers.append(server)
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        bound = str(TcpAddress(host=bound_host, port=bound_port))
        self.addresses.append(bound)
        return bound

    async def close(self) -> None:
        """Stop listening."""
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            code, body, content_type = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            code, body, content_type = 400, b"bad request\n", "text/plain"
        except ConnectionError:
            writer.close()
            return
        reply = (
            f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(ConnectionError):
            writer.writelines([reply, body])
            await writer.drain()
        writer.close()

    def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method != b"GET":
            return 405, b"only GET\n", "text/plain"
        if path != b"/metrics":
            return 404, b"try /metrics\n", "text/plain"
        return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST


_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
