"""The `livemig fault` subcommands (see livemig.fault for what each fault does)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from livemig import fault
from livemig.fault import DEFAULT_PORT, FaultCommandError, Target

if TYPE_CHECKING:
    import argparse

_NETWORK = ("partition", "reset", "loss", "bandwidth", "clear")
_SIGNALS = {"kill": "KILL", "pause": "STOP", "resume": "CONT"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `livemig fault` and its subcommands."""
    parser = sub.add_parser("fault", help="inject or clear a network or process fault")
    kinds = parser.add_subparsers(dest="fault", required=True)
    for name, help_text in (
        ("partition", "drop the migration port both ways (heal: clear, or --duration)"),
        ("reset", "reset every connection on the migration port (TCP RST)"),
        ("loss", "drop a share of the migration port's packets at random"),
        ("bandwidth", "cap the target's egress bandwidth (tc tbf)"),
        ("clear", "remove every network fault this tool added"),
        ("kill", "SIGKILL the daemon"),
        ("pause", "SIGSTOP the daemon"),
        ("resume", "SIGCONT the daemon"),
    ):
        _add_target(kinds.add_parser(name, help=help_text), name)
    proxy = kinds.add_parser("proxy", help="talk to a fault proxy's control API")
    proxy.add_argument("--control", default="127.0.0.1:8474", help="HOST:PORT of the control API")
    proxy.add_argument("action", choices=["add", "list", "status", "clear", "release", "reset"])
    proxy.add_argument("spec", nargs="?", help='for add: a JSON fault, e.g. {"type": "stall"}')


def _add_target(parser: argparse.ArgumentParser, name: str) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--netns", help="a network namespace (ip netns)")
    where.add_argument("--service", help="a docker compose service")
    where.add_argument("--pid", type=int, help="a process id (kill/pause/resume)")
    parser.add_argument("--project", help="the docker compose project name")
    if name in _NETWORK:
        parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="migration port")
        parser.add_argument("--device", default="eth0", help="interface (bandwidth, clear)")
    if name == "partition":
        parser.add_argument("--duration", type=float, help="heal after this many seconds")
    if name == "loss":
        parser.add_argument("--percent", type=float, required=True)
    if name == "bandwidth":
        parser.add_argument("--rate", required=True, help="tc rate, e.g. 100mbit or 20mbps")


def run(args: argparse.Namespace) -> str:
    """Apply one `livemig fault` command; return what was done."""
    if args.fault == "proxy":
        return _proxy(args)
    target = Target(netns=args.netns, service=args.service, pid=args.pid, project=args.project)
    name = str(args.fault)
    if name in _SIGNALS:
        fault.send_signal(target, _SIGNALS[name])
    elif name == "partition":
        fault.partition(target, port=args.port, duration_s=args.duration)
    elif name == "reset":
        fault.apply_rules(target, fault.reset_rules(args.port))
    elif name == "loss":
        fault.apply_rules(target, fault.loss_rules(args.port, args.percent))
    elif name == "bandwidth":
        fault.apply_rules(target, fault.bandwidth_rules(args.device, args.rate))
    else:
        fault.clear_network(target, device=args.device)
    return f"{name}: done"


def _proxy(args: argparse.Namespace) -> str:
    requests = {
        "list": ("GET", "/faults", None),
        "status": ("GET", "/status", None),
        "clear": ("DELETE", "/faults", None),
        "release": ("POST", "/release", None),
        "reset": ("POST", "/reset", None),
    }
    if args.action == "add":
        if not args.spec:
            raise FaultCommandError('proxy add needs a JSON fault, e.g. {"type": "stall"}')
        method, path, body = "POST", "/faults", json.loads(args.spec)
    else:
        method, path, body = requests[args.action]
    return json.dumps(fault.proxy_request(args.control, method, path, body), indent=2)
