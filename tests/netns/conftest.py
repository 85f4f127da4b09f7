"""Fixtures for multi-host tests in network namespaces (root only; CI runs as root)."""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from livemig.netns import Host, NetnsRig, netns_unavailable, remove_stale_rigs

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from livemig.daemons import DaemonProcess

QMP_PORT = 4444
MIGRATION_PORT = 7777


@dataclass
class Hosts:
    """The rig plus the daemons started in it (stopped at teardown)."""

    rig: NetnsRig
    logs: Path
    daemons: list[DaemonProcess] = field(default_factory=list)

    def __getitem__(self, index: int) -> Host:
        return self.rig.hosts[index]

    def source(self, host: Host, *vm_args: str, name: str = "source") -> DaemonProcess:
        """A source daemon with QMP and an incoming listener on the host's address."""
        args = ["--qmp", f"tcp:{host.address}:{QMP_PORT}"]
        args += ["--incoming", f"tcp:{host.address}:{MIGRATION_PORT}", *vm_args]
        return self._start(host, "source_daemon", args, name)

    def dest(self, host: Host, *extra: str, name: str = "dest") -> DaemonProcess:
        """A destination daemon listening on the host's address."""
        args = ["--qmp", f"tcp:{host.address}:{QMP_PORT}"]
        args += ["--incoming", f"tcp:{host.address}:{MIGRATION_PORT}", *extra]
        return self._start(host, "dest_daemon", args, name)

    def _start(self, host: Host, module: str, args: list[str], name: str) -> DaemonProcess:
        log_path = self.logs / f"{name}-{len(self.daemons)}.log"
        daemon = self.rig.start(host, module, args, name=name, log_path=log_path)
        self.daemons.append(daemon)
        return daemon


def _rig(tmp_path: Path, n_hosts: int) -> Iterator[Hosts]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    remove_stale_rigs()
    rig = NetnsRig(tag=secrets.token_hex(2), subnet=random.randint(1, 250))
    hosts = Hosts(rig=rig, logs=tmp_path)
    try:
        rig.up(n_hosts)
        yield hosts
    finally:
        for daemon in hosts.daemons:
            daemon.stop()
        rig.down()


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Hosts]:
    """Two hosts (10.231.N.1 and .2) on a bridge with the test process at .254."""
    yield from _rig(tmp_path, 2)


@pytest.fixture
def three_hosts(tmp_path: Path) -> Iterator[Hosts]:
    """Three hosts on a bridge."""
    yield from _rig(tmp_path, 3)
