"""The `livemig` command: demo, migrate, replay, analyze, report, certs, resolve, qmp, fault."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from faultproxy.__main__ import build_parser as faultproxy_parser
from faultproxy.__main__ import serve_from_args as faultproxy_serve
from livemig import fault_cli
from livemig.analyze import analyze_file
from livemig.certs import DEFAULT_CLIENT, DEFAULT_DAYS, client_identity, make_creds_dir
from livemig.demo import DemoOptions, run_demo
from livemig.fault import FaultCommandError
from livemig.migrate import PostcopyTrigger, run_migration
from livemig.progress import summary_lines
from livemig.replay import load_config, replay_digest
from livemig.report import (
    ReportError,
    fetch_record,
    load_record_file,
    record_target,
    report_lines,
)
from livemig.report_chart import draw_report_chart
from livemig.resolve import ResolveError, resolve
from netio import NetIOError, QMPClient, TlsCredsX509, configure_logging
from vmsim import ConfigError


def _on_off(text: str) -> tuple[str, bool]:
    name, _, state = text.partition("=")
    if state not in ("on", "off"):
        msg = f"expected NAME=on or NAME=off, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return name, state == "on"


def _parameter(text: str) -> tuple[str, object]:
    """`NAME=VALUE`: an integer, true/false, or a word (x-timeout-action=throttle)."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        msg = f"expected NAME=VALUE, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if value in ("true", "false"):
        return name, value == "true"
    try:
        return name, int(value)
    except ValueError:
        return name, value


def _migrate_options(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, bool]]:
    """The parameters and capabilities the flags of `livemig migrate` stand for."""
    parameters: dict[str, object] = {}
    capabilities: dict[str, bool] = {}
    if args.auto_converge:
        capabilities["auto-converge"] = True
    if args.dirty_limit is not None:
        capabilities["dirty-limit"] = True
        parameters["vcpu-dirty-limit"] = args.dirty_limit
    if args.multifd is not None:
        capabilities["multifd"] = True
        parameters["multifd-channels"] = args.multifd
    if args.postcopy:
        capabilities["postcopy-ram"] = True
    for flag, name in (
        ("completion_timeout_per_gib", "x-completion-timeout-per-gib"),
        ("progress_timeout", "x-progress-timeout"),
        ("timeout_action", "x-timeout-action"),
    ):
        value = getattr(args, flag)
        if value is not None:
            parameters[name] = value
    return parameters, capabilities


def _postcopy_trigger(args: argparse.Namespace) -> PostcopyTrigger | None:
    """When `--postcopy` switches (None: no --postcopy)."""
    if not args.postcopy:
        if args.postcopy_after is not None or args.postcopy_after_pass is not None:
            msg = "--postcopy-after and --postcopy-after-pass need --postcopy"
            raise SystemExit(msg)
        return None
    return PostcopyTrigger(after_s=args.postcopy_after, after_pass=args.postcopy_after_pass)


def _add_convergence_flags(migrate: argparse.ArgumentParser) -> None:
    throttle = migrate.add_mutually_exclusive_group()
    throttle.add_argument(
        "--auto-converge", action="store_true",
        help="throttle the vCPUs when the guest dirties memory faster than it is sent "
        "(capability auto-converge; tune with --set cpu-throttle-initial=N ...)",
    )  # fmt: skip
    throttle.add_argument(
        "--dirty-limit", type=int, metavar="MBPS",
        help="cap each vCPU's page writes at MBPS MB/s when the guest outruns the link "
        "(capability dirty-limit, parameter vcpu-dirty-limit)",
    )  # fmt: skip
    migrate.add_argument(
        "--multifd", type=int, metavar="N", nargs="?", const=2,
        help="send the pages over N more connections (capability multifd, parameter "
        "multifd-channels; N defaults to 2)",
    )  # fmt: skip
    migrate.add_argument(
        "--postcopy", action="store_true",
        help="switch to postcopy (capability postcopy-ram, then migrate-start-postcopy): the "
        "guest moves and pulls its missing pages; after the first pass unless told otherwise",
    )  # fmt: skip
    after = migrate.add_mutually_exclusive_group()
    after.add_argument(
        "--postcopy-after", type=float, metavar="SECONDS",
        help="with --postcopy: switch SECONDS after migrate",
    )  # fmt: skip
    after.add_argument(
        "--postcopy-after-pass", type=int, metavar="N",
        help="with --postcopy: switch once pass N is done",
    )  # fmt: skip
    migrate.add_argument(
        "--completion-timeout-per-gib", type=int, metavar="S",
        help="give the migration S seconds per GiB of guest RAM (x-completion-timeout-per-gib)",
    )  # fmt: skip
    migrate.add_argument(
        "--progress-timeout", type=int, metavar="S",
        help="end it when S seconds pass without a new pass or fewer remaining bytes "
        "(x-progress-timeout)",
    )  # fmt: skip
    migrate.add_argument(
        "--timeout-action", choices=["cancel", "throttle", "postcopy"],
        help="what an expired timeout does: cancel (the VM stays here), throttle (turn "
        "auto-converge on) or postcopy (switch; needs --postcopy) (x-timeout-action)",
    )  # fmt: skip


def _add_report_and_certs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`livemig report` and `livemig certs`."""
    report = sub.add_parser("report", help="what happened in one migration, pass by pass")
    report.add_argument(
        "target", metavar="ID|FILE", help="a migration id (or prefix), or a record file"
    )
    report.add_argument(
        "--qmp", default="tcp:127.0.0.1:4444", metavar="ADDRESS",
        help="the daemon to ask for the record of ID (default: tcp:127.0.0.1:4444)",
    )  # fmt: skip
    report.add_argument("--png", type=Path, metavar="OUT", help="draw the per-pass chart into OUT")
    report.add_argument("--json", action="store_true", help="print the whole record as JSON")

    certs = sub.add_parser("certs", help="make a CA and TLS certificates in QEMU's layout")
    certs.add_argument("dir", type=Path, help="the directory (QEMU's tls-creds-x509 dir=)")
    certs.add_argument(
        "--host", action="append", required=True, metavar="NAME",
        help="a name or address the server certificate is valid for (repeatable)",
    )  # fmt: skip
    certs.add_argument("--client-name", default=DEFAULT_CLIENT, help="the client's CN")
    certs.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity (days)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(prog="livemig", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="migrate a busy VM between two local daemons, check it")
    demo.add_argument("--ram-mib", type=int, default=defaults.ram_mib)
    demo.add_argument("--workload", default=defaults.workload)
    demo.add_argument("--dirty-rate", type=int, default=defaults.dirty_rate)
    demo.add_argument("--downtime-limit", type=int, default=defaults.downtime_limit_ms)
    demo.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")

    migrate = sub.add_parser("migrate", help="migrate the VM of a running source daemon")
    migrate.add_argument("--from", dest="source", required=True, help="source QMP address")
    migrate.add_argument("--to", dest="uri", required=True, help="destination URI")
    migrate.add_argument(
        "--set", action="append", type=_parameter, default=[], metavar="PARAM=VALUE",
        help="migration parameter, e.g. downtime-limit=100 (repeatable)",
    )  # fmt: skip
    migrate.add_argument(
        "--cap", action="append", type=_on_off, default=[], metavar="CAP=on|off",
        help="migration capability, e.g. x-digest-check=on (repeatable)",
    )  # fmt: skip
    _add_convergence_flags(migrate)

    replay = sub.add_parser("replay", help="the digest of a VM after N ticks, without daemons")
    replay.add_argument("--config", type=Path, required=True, help="VM config JSON (x-query-vm)")
    replay.add_argument("--ticks", type=int, required=True)

    analyze = sub.add_parser("analyze", help="print a captured migration stream as JSON")
    analyze.add_argument("file", type=Path)

    qmp = sub.add_parser("qmp", help="run one QMP command and print its JSON reply")
    qmp.add_argument("address", help="tcp:HOST:PORT or unix:PATH")
    qmp.add_argument("name", help="the command, e.g. query-status")
    qmp.add_argument("arguments", nargs="?", help="its arguments as a JSON object")
    qmp.add_argument(
        "--tls-creds", type=Path, metavar="DIR",
        help="speak TLS, with the client certificate in DIR (QEMU's layout: livemig certs)",
    )  # fmt: skip
    qmp.add_argument("--tls-hostname", help="the name in the server's certificate (default: HOST)")

    _add_report_and_certs(sub)
    fault_cli.add_parser(sub)
    sub.add_parser(
        "fault-proxy",
        parents=[faultproxy_parser(add_help=False)],
        help="run a fault proxy on the migration path (python -m faultproxy)",
    )

    res = sub.add_parser("resolve", help="settle an in-doubt handover (docs/handover.md)")
    res.add_argument("--source", help="source QMP address")
    res.add_argument("--dest", help="destination QMP address")
    res.add_argument("--source-dead", action="store_true", help="the source daemon is gone")
    res.add_argument("--dest-dead", action="store_true", help="the destination daemon is gone")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `livemig`."""
    args = build_parser().parse_args(argv)
    configure_logging(json=False, level="warning")
    try:
        return _dispatch(args)
    except (
        NetIOError,
        ResolveError,
        ReportError,
        ConfigError,
        FaultCommandError,
        OSError,
        TimeoutError,
        ValueError,
    ) as exc:
        print(f"livemig {args.command}: {exc}", file=sys.stderr)
        return 1


async def _qmp_once(args: argparse.Namespace) -> object:
    arguments = json.loads(args.arguments) if args.arguments else None
    context = None
    if args.tls_creds is not None:
        context = TlsCredsX509(id="livemig", dir=args.tls_creds, endpoint="client").context()
    async with await QMPClient.connect(
        args.address, ssl=context, server_hostname=args.tls_hostname
    ) as client:
        return await client.execute(args.name, arguments)


def _report(args: argparse.Namespace) -> int:
    path = record_target(args.target)
    if path is not None:
        record = load_record_file(path)
    else:
        record = asyncio.run(fetch_record(args.qmp, args.target))
    print(json.dumps(record, indent=1) if args.json else "\n".join(report_lines(record)))
    if args.png is not None:
        print(f"chart: {draw_report_chart(record, args.png)}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one return per subcommand
    if args.command == "demo":
        options = DemoOptions(
            ram_mib=args.ram_mib,
            workload=args.workload,
            dirty_rate=args.dirty_rate,
            downtime_limit_ms=args.downtime_limit,
            loop=args.loop,
        )
        return 0 if asyncio.run(run_demo(options)).ok else 1
    if args.command == "migrate":
        parameters, capabilities = _migrate_options(args)
        info = asyncio.run(
            run_migration(
                args.source,
                args.uri,
                parameters={**dict(args.set), **parameters},
                capabilities={**dict(args.cap), **capabilities},
                postcopy=_postcopy_trigger(args),
            )
        )
        print("\n".join(summary_lines(info)))
        return 0 if info.get("status") == "completed" else 1
    if args.command == "replay":
        print(json.dumps(replay_digest(load_config(args.config), args.ticks)))
        return 0
    if args.command == "qmp":
        print(json.dumps(asyncio.run(_qmp_once(args)), indent=2))
        return 0
    if args.command == "fault":
        print(fault_cli.run(args))
        return 0
    if args.command == "fault-proxy":
        return faultproxy_serve(args)
    if args.command == "report":
        return _report(args)
    if args.command == "certs":
        make_creds_dir(args.dir, args.host, client_name=args.client_name, days=args.days)
        print(f"{args.dir}: ca-cert.pem, server-cert.pem/-key.pem, client-cert.pem/-key.pem")
        print(f"client identity (for tls-authz): {client_identity(args.client_name)}")
        return 0
    if args.command == "analyze":
        report = analyze_file(args.file)
        print(json.dumps(report, indent=2))
        return 1 if "error" in report else 0
    actions = asyncio.run(
        resolve(args.source, args.dest, source_dead=args.source_dead, dest_dead=args.dest_dead)
    )
    print("\n".join(actions))
    return 0
