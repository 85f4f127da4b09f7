"""Boot a simulated VM from options (or a JSON config) and serve QMP until told to stop."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmm.daemon import DaemonOptions
from vmm.entry import (
    add_common_arguments,
    daemon_migration_settings,
    daemon_objects,
    run_daemon,
)
from vmm.fill_content import IMAGE_PREFIX, resolve_fill
from vmsim import ConfigError, Fill, MachineConfig, WorkloadKind

# Command-line flag -> MachineConfig key.
_VM_FLAGS = {
    "ram_mib": "ram_mib",
    "fill": "fill",
    "workload": "workload",
    "dirty_rate": "dirty_rate",
    "tick_hz": "tick_hz",
    "working_set_mib": "working_set_mib",
    "hot_mib": "hot_mib",
    "hot_percent": "hot_percent",
    "seed": "seed",
    "vcpus": "vcpus",
    "uuid": "uuid",
}


def _fill(text: str) -> str:
    if text.startswith(IMAGE_PREFIX) or text in {str(fill) for fill in Fill} - {"image"}:
        return text
    msg = f"expected zero, random, pattern, mixed or image:PATH, got {text!r}"
    raise argparse.ArgumentTypeError(msg)


def build_parser() -> argparse.ArgumentParser:
    """The source daemon's command line."""
    parser = argparse.ArgumentParser(
        prog="source-daemon",
        description="Run a simulated VM and serve QMP; `migrate` sends it to a dest-daemon.",
    )
    vm = parser.add_argument_group("the VM (flags override --config)")
    vm.add_argument("--config", type=Path, help="JSON file with the VM's configuration")
    vm.add_argument("--ram-mib", type=int, help="guest RAM in MiB (default 256)")
    vm.add_argument(
        "--fill", type=_fill, metavar="KIND",
        help="initial RAM contents: zero, random, pattern, mixed (files every Debian machine "
        "has, 25 %% zero pages), or image:PATH (a file or directory tree, zero-padded)",
    )  # fmt: skip
    vm.add_argument("--workload", choices=[w.value for w in WorkloadKind], help="guest workload")
    vm.add_argument("--dirty-rate", type=int, help="guest page writes per second")
    vm.add_argument("--tick-hz", type=int, help="guest ticks per second (default 1000)")
    vm.add_argument("--working-set-mib", type=int, help="region the workload writes")
    vm.add_argument("--hot-mib", type=int, help="hot set size (hotset workload)")
    vm.add_argument("--hot-percent", type=int, help="share of writes to the hot set")
    vm.add_argument("--seed", type=int, help="seed of the deterministic workload and fill")
    vm.add_argument("--vcpus", type=int, help="number of vCPUs (default 1)")
    vm.add_argument("--uuid", help="the VM's UUID (default: a random one)")
    vm.add_argument("-S", "--paused", action="store_true", help="do not start the vCPUs (QEMU -S)")
    parser.add_argument(
        "--incoming", metavar="URI", help="also listen for an incoming migration (tcp:, unix:)"
    )
    add_common_arguments(parser)
    return parser


def machine_config(args: argparse.Namespace) -> tuple[MachineConfig, bytes | None]:
    """The VM configuration (the --config file, overridden by flags) and its fill's bytes."""
    values: dict[str, object] = {}
    if args.config is not None:
        values.update(json.loads(args.config.read_text()))
    for flag, key in _VM_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            values[key] = value
    return resolve_fill(values)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `source-daemon`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, content = machine_config(args)
    except (ConfigError, OSError, ValueError) as exc:
        parser.error(str(exc))
    settings = daemon_migration_settings(parser, args)
    options = DaemonOptions(
        role="source",
        vm_config=config,
        vm_content=content,
        start_paused=args.paused,
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
    )
    return run_daemon(args, options)


if __name__ == "__main__":
    sys.exit(main())
