"""Command-line plumbing both daemons share: common flags, logging, the loop, the run."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from migration import EngineError, MigrationCapabilities, MigrationParameters, capability_names
from netio import configure_logging, run
from vmm.main import serve
from vmm.objects import ObjectRegistry, parse_object_option

if TYPE_CHECKING:
    import asyncio

    from vmm.daemon import DaemonOptions


def record_dir(text: str) -> Path:
    """`--record-dir`: created if missing; refused at start if it cannot hold records.

    Raises:
        argparse.ArgumentTypeError: it cannot be created or written to.
    """
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the record directory {text!r}: {exc.strerror or exc}"
        raise argparse.ArgumentTypeError(msg) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        msg = f"the record directory {text!r} is not writable"
        raise argparse.ArgumentTypeError(msg)
    return path


def _object_option(text: str) -> dict[str, object]:
    try:
        return parse_object_option(text)
    except EngineError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def daemon_objects(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[dict[str, object], ...]:
    """The `--object`s, each made once to check it (a bad one is a start-up error)."""
    registry = ObjectRegistry()
    for props in args.object:
        try:
            registry.add(props)
        except EngineError as exc:
            parser.error(f"--object {props.get('id', '')}: {exc.message}")
    return tuple(args.object)


def _global_option(text: str) -> tuple[str, object]:
    """QEMU's ``-global migration.NAME=VALUE``: a migration parameter or capability at start."""
    prop, sep, value = text.partition("=")
    owner, dot, name = prop.partition(".")
    if not sep or owner != "migration" or not dot or not name:
        msg = f"expected migration.NAME=VALUE, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if value in ("on", "off", "true", "false", "yes", "no"):
        return name, value in ("on", "true", "yes")
    try:
        return name, int(value)
    except ValueError:
        return name, value


def daemon_migration_settings(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[dict[str, object], dict[str, bool]]:
    """The `--global migration.X=V`s as (parameters, capabilities), checked at start."""
    parameters: dict[str, object] = {}
    capabilities: dict[str, bool] = {}
    for name, value in args.globals:
        if name in capability_names():
            if not isinstance(value, bool):
                parser.error(f"--global migration.{name} takes on or off")
            capabilities[name] = value
        else:
            parameters[name] = value
    try:
        MigrationParameters().updated(parameters)
        MigrationCapabilities().updated(capabilities)
    except EngineError as exc:
        parser.error(f"--global: {exc.message}")
    ids = {props.get("id") for props in args.object}
    for name in ("tls-creds", "tls-authz"):
        if parameters.get(name) and parameters[name] not in ids:
            parser.error(f"--global migration.{name}={parameters[name]}: no --object has that id")
    return parameters, capabilities


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every daemon takes: QMP addresses, event loop, logging, serial output, objects."""
    parser.add_argument(
        "--global",
        dest="globals",
        action="append",
        default=[],
        type=_global_option,
        metavar="migration.NAME=VALUE",
        help="a migration parameter or capability from the start, as QEMU's -global "
        "(e.g. migration.tls-creds=tls0, migration.events=on; repeatable)",
    )
    parser.add_argument(
        "--object",
        action="append",
        default=[],
        type=_object_option,
        metavar="TYPE,id=ID,...",
        help="a QEMU object: tls-creds-x509,id=tls0,dir=DIR,endpoint=server|client"
        "[,verify-peer=on], authz-simple,id=ID,identity=DN (',,' for a comma), or a JSON "
        "object such as an authz-list (repeatable)",
    )
    parser.add_argument(
        "--qmp",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="serve QMP on tcp:HOST:PORT or unix:PATH (repeatable; port 0 picks a free port)",
    )
    parser.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="serve Prometheus metrics at /metrics on tcp:HOST:PORT (repeatable; port 0 picks)",
    )
    parser.add_argument(
        "--record-dir",
        type=record_dir,
        metavar="DIR",
        help="write the record of every migration to DIR/ID-ROLE.json (livemig report reads it)",
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop implementation (default: uvloop)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="log format on stderr: JSON lines, readable console, or console on a TTY (default)",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    parser.add_argument(
        "--mem-prealloc",
        action="store_true",
        help="fault an incoming VM's RAM in before the first page may come, as QEMU's "
        "-mem-prealloc (setup takes longer; the pages then land on memory already there)",
    )
    parser.add_argument(
        "--serial", type=Path, metavar="FILE", help="append the guest's serial output to FILE"
    )
    parser.add_argument(
        "--vcpu-thread",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the vCPU on a thread of its own, as QEMU does (default), or on the event "
        "loop between migration and monitor work (--no-vcpu-thread)",
    )


def run_daemon(args: argparse.Namespace, options: DaemonOptions) -> int:
    """Configure logging and run the daemon on the chosen loop."""
    json_logs = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(json=json_logs, level=args.log_level, stream=sys.stderr)

    async def main(shutdown: asyncio.Event) -> int:
        return await serve(options, shutdown)

    return run(main, loop=args.loop)
