"""Hosts in network namespaces, joined by a bridge, for real multi-host tests without Docker.

    root namespace (the test process, the fault proxy): bridge lmbrTAG, 10.231.N.254/24
      |-- veth -- namespace lmTAGa: eth0 10.231.N.1   (source daemon)
      |-- veth -- namespace lmTAGb: eth0 10.231.N.2   (destination daemon)
      `-- veth -- namespace lmTAGc: eth0 10.231.N.3   (a third host, when asked for)

Only these private addresses are ever contacted. Everything is removed at the end, also when a
test fails; names carry a per-run tag so stale rigs of a crashed run can be recognised.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from livemig.daemons import DaemonProcess, start_daemon

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

PREFIX = "lm"


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces (CI runs as root)"
    for tool in ("ip", "iptables", "tc", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 iptables util-linux)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.decode().strip()}"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Host:
    """One namespace: its name and address."""

    netns: str
    address: str

    def exec_prefix(self) -> list[str]:
        """Run a command inside this host."""
        return ["ip", "netns", "exec", self.netns]


@dataclass
class NetnsRig:
    """A bridge in the root namespace and one namespace per host on it."""

    tag: str
    subnet: int
    hosts: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        """The bridge's name (15 characters at most, as the kernel requires)."""
        return f"{PREFIX}br{self.tag}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (where the test and the proxy live)."""
        return f"10.231.{self.subnet}.254"

    def up(self, n_hosts: int = 2) -> None:
        """Create the bridge and the hosts."""
        _ip("link", "add", self.bridge, "type", "bridge")
        # Docker's engine loads br_netfilter and sets the FORWARD policy to DROP, so frames
        # bridged between our hosts would be dropped: accept those of this bridge (and only them).
        subprocess.run(["iptables", *self._forward_rule("-I")], check=True, capture_output=True)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index in range(n_hosts):
            self._add_host(index)

    def _add_host(self, index: int) -> None:
        letter = "abc"[index]
        netns = f"{PREFIX}{self.tag}{letter}"
        outside, inside = f"{PREFIX}{self.tag}{letter}o", f"{PREFIX}{self.tag}{letter}i"
        address = f"10.231.{self.subnet}.{index + 1}"
        _ip("netns", "add", netns)
        self.hosts.append(Host(netns=netns, address=address))
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", netns)
        _ip("link", "set", outside, "master", self.bridge, "up")
        run_in = ["netns", "exec", netns, "ip"]
        _ip(*run_in, "link", "set", inside, "name", "eth0")
        _ip(*run_in, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip(*run_in, "link", "set", "eth0", "up")
        _ip(*run_in, "link", "set", "lo", "up")

    def down(self) -> None:
        """Remove everything (namespaces take their veth ends along)."""
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.netns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        subprocess.run(["iptables", *self._forward_rule("-D")], check=False, capture_output=True)
        self.hosts.clear()

    def _forward_rule(self, action: str) -> list[str]:
        position = ["1"] if action == "-I" else []
        return [action, "FORWARD", *position, "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]

    def start(
        self,
        host: Host,
        module: str,
        arguments: Sequence[str],
        *,
        name: str,
        log_path: Path | None = None,
    ) -> DaemonProcess:
        """Start a daemon inside a host."""
        return start_daemon(
            module, list(arguments), name=name, log_path=log_path, wrapper=host.exec_prefix()
        )


def remove_stale_rigs() -> None:
    """Delete namespaces and bridges left by a crashed run of this rig (ours only)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX) and len(name) == len(PREFIX) + 5:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False)
    for line in links.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(f"{PREFIX}br") and len(name) == len(PREFIX) + 6:
            subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
    rules = subprocess.run(
        ["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=False
    )
    for rule in rules.stdout.splitlines():
        words = rule.split()
        if "-i" in words and words[words.index("-i") + 1].startswith(f"{PREFIX}br"):
            delete = ["iptables", "-D", *words[1:]]
            subprocess.run(delete, check=False, capture_output=True)
