"""Wait for an incoming migration (`--incoming URI`, or `defer` and QMP `migrate-incoming`)."""

from __future__ import annotations

import argparse
import sys

from vmm.daemon import DaemonOptions
from vmm.entry import (
    add_common_arguments,
    daemon_migration_settings,
    daemon_objects,
    run_daemon,
)


def build_parser() -> argparse.ArgumentParser:
    """The destination daemon's command line."""
    parser = argparse.ArgumentParser(
        prog="dest-daemon",
        description="Receive a live migration from a source-daemon and run the VM.",
    )
    parser.add_argument(
        "--incoming",
        default="defer",
        metavar="URI",
        help="listen on tcp:HOST:PORT or unix:PATH, load file:PATH, or 'defer' to wait for "
        "QMP migrate-incoming (default)",
    )
    parser.add_argument(
        "--uuid", help="the UUID of the VM expected (checked when the source sets validate-uuid)"
    )
    parser.add_argument(
        "-S", "--paused", action="store_true", help="keep the received VM paused (QEMU -S)"
    )
    parser.add_argument(
        "-m",
        "--ram-mib",
        type=int,
        default=0,
        metavar="MIB",
        help="the RAM size of the VM expected (QEMU's -m): with --mem-prealloc it is faulted in "
        "at start, before any migration (QEMU's destination does so); other sizes still load",
    )
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `dest-daemon`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = daemon_migration_settings(parser, args)
    options = DaemonOptions(
        role="destination",
        incoming=args.incoming,
        qmp=tuple(args.qmp),
        metrics=tuple(args.metrics),
        record_dir=args.record_dir,
        objects=daemon_objects(parser, args),
        parameters=settings[0],
        capabilities=settings[1],
        serial_path=args.serial,
        mem_prealloc=args.mem_prealloc,
        vcpu_thread=args.vcpu_thread,
        standby_ram_mib=max(0, args.ram_mib),
        expected_uuid=args.uuid,
        start_paused=args.paused,
    )
    return run_daemon(args, options)


if __name__ == "__main__":
    sys.exit(main())
