"""`livemig fault`: inject and clear network and process faults on a namespace or a service.

Targets: a network namespace (`--netns NAME`, the test rig's hosts) or a docker compose service
(`--service NAME`, whose container's network namespace is entered with nsenter). The kernel here
has no netem, so:

| fault | how |
|---|---|
| partition | iptables DROP of the migration port, both ways (heal with `clear`, or `--duration`) |
| reset | iptables REJECT --reject-with tcp-reset: every packet of the connection gets a reset |
| loss | iptables `-m statistic --mode random` DROP with probability p |
| bandwidth | tc tbf on the target's interface |
| latency, jitter, stall, cuts at a byte count or before a frame | the fault proxy |
| kill, pause, resume | SIGKILL, SIGSTOP, SIGCONT to the daemon (docker kill -s for a service) |

iptables rules go into their own chain (LIVEMIG), jumped to from INPUT and OUTPUT, so `clear`
removes exactly what this tool added.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

CHAIN: Final = "LIVEMIG"
DEFAULT_PORT: Final = 7777


class FaultCommandError(RuntimeError):
    """A fault could not be applied (the message names the command and its error)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """Where a fault applies: a network namespace, a compose service, or a process id."""

    netns: str | None = None
    service: str | None = None
    pid: int | None = None
    project: str | None = None

    def prefix(self) -> list[str]:
        """The command prefix that runs a command inside the target's network namespace."""
        if self.netns is not None:
            return ["ip", "netns", "exec", self.netns]
        if self.service is not None:
            return ["nsenter", "-t", str(container_pid(self.container())), "-n"]
        raise FaultCommandError("a network fault needs --netns or --service")

    def container(self) -> str:
        """The container id of the compose service."""
        command = ["docker", "compose"]
        if self.project:
            command += ["-p", self.project]
        ids = run_command([*command, "ps", "-q", str(self.service)]).split()
        if not ids:
            raise FaultCommandError(f"no running container for service {self.service!r}")
        return ids[0]


def container_pid(container: str) -> int:
    """The host pid of a container's init process."""
    return int(run_command(["docker", "inspect", "-f", "{{.State.Pid}}", container]).strip())


# -- pure command builders (tested without root) -----------------------------------------------


def chain_setup() -> list[list[str]]:
    """Create the LIVEMIG chain and jump to it from INPUT and OUTPUT (idempotent via `clear`)."""
    return [
        ["iptables", "-N", CHAIN],
        ["iptables", "-I", "INPUT", "1", "-j", CHAIN],
        ["iptables", "-I", "OUTPUT", "1", "-j", CHAIN],
    ]


def chain_teardown() -> list[list[str]]:
    """Remove the LIVEMIG chain and its jumps."""
    return [
        ["iptables", "-D", "INPUT", "-j", CHAIN],
        ["iptables", "-D", "OUTPUT", "-j", CHAIN],
        ["iptables", "-F", CHAIN],
        ["iptables", "-X", CHAIN],
    ]


def _port_match(port: int) -> list[str]:
    return ["-p", "tcp", "-m", "multiport", "--ports", str(port)]


def partition_rules(port: int) -> list[list[str]]:
    """Drop every packet of the migration port, in and out."""
    return [["iptables", "-A", CHAIN, *_port_match(port), "-j", "DROP"]]


def reset_rules(port: int) -> list[list[str]]:
    """Answer every incoming packet of the migration port with a TCP reset."""
    return [
        ["iptables", "-A", CHAIN, *_port_match(port), "-j", "REJECT", "--reject-with", "tcp-reset"]
    ]


def loss_rules(port: int, percent: float) -> list[list[str]]:
    """Drop that share of the migration port's packets, at random."""
    if not 0 < percent <= 100:  # noqa: PLR2004 - a percentage
        raise FaultCommandError(f"--percent must be in (0, 100], got {percent}")
    probability = f"{percent / 100:.4f}"
    match = [*_port_match(port), "-m", "statistic", "--mode", "random"]
    return [["iptables", "-A", CHAIN, *match, "--probability", probability, "-j", "DROP"]]


def bandwidth_rules(device: str, rate: str) -> list[list[str]]:
    """Cap the target's egress with a token bucket (tc tbf)."""
    tbf = ["tbf", "rate", rate, "burst", "64kb", "latency", "400ms"]
    return [["tc", "qdisc", "replace", "dev", device, "root", *tbf]]


def bandwidth_clear(device: str) -> list[list[str]]:
    """Remove the token bucket."""
    return [["tc", "qdisc", "del", "dev", device, "root"]]


# -- running ------------------------------------------------------------------------------------


def run_command(command: Sequence[str], *, check: bool = True) -> str:
    """Run a command; raise FaultCommandError naming it if it fails (and check is set)."""
    if shutil.which(command[0]) is None:
        raise FaultCommandError(f"{command[0]} is not installed")
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if check and result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        raise FaultCommandError(f"{' '.join(command)}: {detail}")
    return result.stdout


def apply_rules(target: Target, rules: Sequence[Sequence[str]]) -> None:
    """Install iptables/tc rules inside the target's network namespace."""
    prefix = target.prefix()
    if any(rule[0] == "iptables" for rule in rules):
        clear_network(target)
        for command in chain_setup():
            run_command([*prefix, *command])
    for rule in rules:
        run_command([*prefix, *rule])


def clear_network(target: Target, *, device: str | None = None) -> None:
    """Remove every rule this tool added (missing ones are fine)."""
    prefix = target.prefix()
    for command in chain_teardown():
        run_command([*prefix, *command], check=False)
    if device is not None:
        for command in bandwidth_clear(device):
            run_command([*prefix, *command], check=False)


def partition(target: Target, *, port: int, duration_s: float | None) -> None:
    """Partition the migration path; heal after `duration_s` when given."""
    apply_rules(target, partition_rules(port))
    if duration_s is not None:
        time.sleep(duration_s)
        clear_network(target)


def send_signal(target: Target, signal_name: str) -> None:
    """KILL, STOP or CONT the target daemon."""
    if target.service is not None:
        run_command(["docker", "kill", "-s", signal_name, target.container()])
    elif target.pid is not None:
        run_command(["kill", f"-{signal_name}", str(target.pid)])
    else:
        raise FaultCommandError("a process fault needs --service or --pid")


def proxy_request(control: str, method: str, path: str, body: object | None = None) -> object:
    """Call the fault proxy's control API (HOST:PORT) and return its JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{control}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        # The URL is built here from http:// and a HOST:PORT: no file: or other schemes.
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise FaultCommandError(f"{method} {path}: {json.loads(exc.read()).get('error')}") from exc
    except OSError as exc:
        raise FaultCommandError(f"fault proxy control at {control}: {exc}") from exc
