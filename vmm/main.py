"""The daemon main shared by `source-daemon` and `dest-daemon`."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
from typing import TYPE_CHECKING

import structlog

from netio import QMPServer, TcpAddress, bind_context, split_qmp_tls
from vmm.daemon import Vmm, version_info
from vmm.prometheus import MetricsServer
from vmm.qmp_commands import build_registry

if TYPE_CHECKING:
    from vmm.daemon import DaemonOptions

log = structlog.get_logger("vmm.main")


async def serve(options: DaemonOptions, shutdown: asyncio.Event) -> int:
    """Run one daemon until SIGTERM/SIGINT or the `quit` command; return the exit code."""
    bind_context(role=options.role)
    vmm = Vmm(options)
    server = QMPServer(commands=build_registry(vmm), version_info=version_info())
    vmm.qmp = server
    metrics = MetricsServer(vmm)
    try:
        for address in options.qmp:
            await _serve_qmp(server, vmm, address)
        for address in options.metrics:
            await metrics.start(address)
        await vmm.start()
        _freeze_startup_objects()
        log.info(
            "daemon_ready",
            qmp=[str(address) for address in server.addresses],
            metrics=metrics.addresses,
            incoming=str(vmm.incoming.address) if vmm.incoming and vmm.incoming.address else None,
            vm=vmm.vm.machine.config.to_dict() if vmm.vm is not None else None,
        )
        await _first_of(shutdown.wait(), vmm.quit_requested.wait())
    finally:
        await vmm.close()
        await metrics.close()
        await server.close()
    log.info("daemon_stopped")
    return 0


async def _serve_qmp(server: QMPServer, vmm: Vmm, text: str) -> None:
    """One `--qmp` address: TLS with `,tls-creds=ID`; a warning for plaintext off loopback.

    Raises:
        NetIOError: the address is malformed or cannot be listened on.
        EngineError: `tls-creds` names no server credentials.
    """
    address, creds_id = split_qmp_tls(text)
    context = vmm.objects.tls_creds(creds_id, "server").context() if creds_id else None
    bound = await server.start(address, ssl=context)
    if context is None and isinstance(bound, TcpAddress) and not _loopback(bound.host):
        log.warning(
            "qmp_without_tls",
            address=str(bound),
            why="anyone who can reach this port controls the VM and can migrate its memory "
            "away; add tls-creds=ID (docs/security.md)",
        )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _freeze_startup_objects() -> None:
    """Keep the startup heap out of every later garbage collection (`gc.freeze`).

    The modules (numpy, structlog, msgpack, ...) and the booted machine are never garbage, but
    the cyclic collector walked them on each full collection: 15-30 ms, about once per
    migration per daemon, which is most of a 50 ms downtime when it lands in one. Measured
    with a gc callback during `python -m bench downtime` (random guest at 60 %, 50 ms limit);
    after the freeze a full collection of what is left takes well under a millisecond.
    """
    gc.collect()
    gc.freeze()


async def _first_of(*waits: object) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
