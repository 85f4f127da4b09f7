"""`python -m faultproxy --listen tcp:0.0.0.0:7000 --upstream tcp:dest:7777 --control 8474`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import structlog

from faultproxy.control import ControlServer
from faultproxy.proxy import FaultProxy
from netio import configure_logging, parse_qmp_address, run

if TYPE_CHECKING:
    import asyncio

log = structlog.get_logger("faultproxy")


def build_parser(*, add_help: bool = True) -> argparse.ArgumentParser:
    """The proxy's command line (also `livemig fault-proxy`, which uses it as a parent)."""
    parser = argparse.ArgumentParser(
        prog="faultproxy",
        description="A TCP proxy on the migration path that injects faults on command.",
        add_help=add_help,
    )
    parser.add_argument("--listen", required=True, help="tcp:HOST:PORT to accept migrations on")
    parser.add_argument("--upstream", required=True, help="tcp:HOST:PORT of the destination")
    parser.add_argument(
        "--control", default="127.0.0.1:8474", help="HOST:PORT of the HTTP control API"
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the proxy and its control API until SIGTERM."""
    return serve_from_args(build_parser().parse_args(argv))


def serve_from_args(args: argparse.Namespace) -> int:
    """Run the proxy described by parsed arguments."""
    configure_logging(json={"auto": None, "json": True, "console": False}[args.log_format])
    listen = parse_qmp_address(args.listen, listen=True)
    upstream = parse_qmp_address(args.upstream)
    host, _, port = args.control.rpartition(":")

    async def serve(shutdown: asyncio.Event) -> int:
        proxy = FaultProxy(upstream=upstream)
        control = ControlServer(proxy)
        bound = await proxy.start(listen)
        control_port = await control.start(host or "0.0.0.0", int(port))  # noqa: S104
        log.info(
            "faultproxy_ready",
            listen=str(bound),
            upstream=str(upstream),
            control_port=control_port,
        )
        try:
            await shutdown.wait()
        finally:
            await control.close()
            await proxy.close()
        return 0

    return run(serve, loop=args.loop)


if __name__ == "__main__":
    sys.exit(main())
