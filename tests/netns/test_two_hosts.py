"""Migrations between real network hosts (namespaces with their own addresses)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import FINAL, assert_matches_replay, qmp, stopped_vm, wait_status
from tests.netns.conftest import MIGRATION_PORT, Hosts

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
BUSY_VM = ("--ram-mib", "64", "--workload", "random", "--dirty-rate", "50000")


async def _migrate(daemon, uri: str) -> dict[str, object]:
    async with qmp(daemon) as client:
        await client.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "x-digest-check", "state": True}]},
        )
        await client.execute("migrate", {"uri": uri})
        return await wait_status(client, FINAL)


async def test_migrate_between_hosts_and_back(two_hosts: Hosts) -> None:
    a, b = two_hosts[0], two_hosts[1]
    source = two_hosts.source(a, *BUSY_VM)
    dest = two_hosts.dest(b)

    assert "completed" == (await _migrate(source, f"tcp:{b.address}:{MIGRATION_PORT}"))["status"]
    assert "completed" == (await _migrate(dest, f"tcp:{a.address}:{MIGRATION_PORT}"))["status"]

    async with qmp(source) as client:
        assert (await client.execute("query-status"))["running"]
        assert_matches_replay(await stopped_vm(client))
    async with qmp(dest) as client:
        assert "postmigrate" == (await client.execute("query-status"))["status"]


async def test_vm_travels_across_three_hosts(three_hosts: Hosts) -> None:
    a, b, c = three_hosts[0], three_hosts[1], three_hosts[2]
    first = three_hosts.source(a, *BUSY_VM)
    second = three_hosts.dest(b, name="second")
    third = three_hosts.dest(c, name="third")

    assert "completed" == (await _migrate(first, f"tcp:{b.address}:{MIGRATION_PORT}"))["status"]
    assert "completed" == (await _migrate(second, f"tcp:{c.address}:{MIGRATION_PORT}"))["status"]

    async with qmp(third) as client:
        assert_matches_replay(await stopped_vm(client))
