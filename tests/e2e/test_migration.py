"""Both daemons as real processes over real TCP: migrations end in the state a replay predicts."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys

import pytest
from qemu.qmp import QMPClient as QemuQMPClient

from netio import QMPTimeoutError
from tests.e2e.conftest import (
    FINAL,
    assert_matches_replay,
    dest_args,
    migrate,
    qmp,
    source_args,
    stopped_vm,
    wait_status,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.mark.parametrize("workload", ["idle", "ab", "random", "hotset"])
async def test_workload_migrates_and_matches_replay(daemons, loop_kind, workload) -> None:
    """Each workload migrates live and, N ticks later, equals a VM that never moved."""
    source = daemons("source_daemon", *source_args(loop_kind, workload=workload), name="source")
    dest = daemons("dest_daemon", *dest_args(loop_kind), name="dest")
    await asyncio.sleep(0.3)

    info = await migrate(source, dest)

    assert "completed" == info["status"], info
    async with qmp(source) as src:
        assert {"status": "postmigrate", "running": False} == await src.execute("query-status")
    async with qmp(dest) as dst:
        assert (await dst.execute("query-status"))["running"]
        await asyncio.sleep(0.3)
        vm = await stopped_vm(dst)
    assert_matches_replay(vm)
    if workload == "ab":
        assert [] == vm["ab-check"]


async def test_completed_source_refuses_to_run_the_vm_again(daemons, loop_kind) -> None:
    """After the handover the source copy must never run: `cont` is refused."""
    source = daemons("source_daemon", *source_args(loop_kind))
    dest = daemons("dest_daemon", *dest_args(loop_kind))
    assert "completed" == (await migrate(source, dest))["status"]

    async with qmp(source) as src:
        with pytest.raises(Exception, match="would run it twice"):
            await src.execute("cont")


async def test_non_converging_migration_completes_once_relaxed(daemons, loop_kind) -> None:
    """QEMU's migrate_ensure_non_converge / _converge: 3 MB/s and 1 ms keep it iterating."""
    source = daemons("source_daemon", *source_args(loop_kind, ram_mib=8, dirty_rate=2000))
    dest = daemons("dest_daemon", *dest_args(loop_kind))
    await migrate(
        source,
        dest,
        parameters={"max-bandwidth": 3_000_000, "downtime-limit": 1},
        wait_for=frozenset({"active"}),
    )
    async with qmp(source) as src:
        async with asyncio.timeout(60):
            while True:  # the first pass is done and memory is dirtied again: several passes
                info = await src.execute("query-migrate")
                if info["ram"]["dirty-sync-count"] >= 3:
                    break
                await asyncio.sleep(0.1)
        assert "active" == info["status"]
        await src.execute("migrate-set-parameters", {"max-bandwidth": 0, "downtime-limit": 30_000})
        info = await wait_status(src, FINAL)

    assert "completed" == info["status"], info
    async with qmp(dest) as dst:
        assert_matches_replay(await stopped_vm(dst))


async def test_ping_pong_a_to_b_to_a(daemons, loop_kind) -> None:
    """A destination migrates the VM onward, back to the daemon it came from."""
    a = daemons("source_daemon", *source_args(loop_kind), name="a")
    b = daemons("dest_daemon", *dest_args(loop_kind), name="b")
    assert "completed" == (await migrate(a, b))["status"]

    async with qmp(a) as client:
        await client.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        address = (await client.execute("query-migrate"))["socket-address"][0]
    a_uri = f"tcp:{address['host']}:{address['port']}"
    async with qmp(b) as client:
        await client.execute("migrate", {"uri": a_uri})
        info = await wait_status(client, FINAL)

    assert "completed" == info["status"], info
    async with qmp(a) as client:
        assert (await client.execute("query-status"))["running"]
        assert_matches_replay(await stopped_vm(client))


async def test_bad_destination_fails_fast_and_source_keeps_running(daemons, loop_kind) -> None:
    """QEMU's /migration/bad_dest: nothing listens, the source fails and still runs."""
    source = daemons("source_daemon", *source_args(loop_kind))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        async with qmp(source) as src:
            await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
            info = await wait_status(src, FINAL, timeout_s=5)
            status = await src.execute("query-status")

    assert "failed" == info["status"]
    assert "refused" in info["error-desc"].lower()
    assert {"status": "running", "running": True} == status


async def test_second_concurrent_stream_is_refused(daemons, loop_kind) -> None:
    """A destination receiving one migration refuses another with a clear error."""
    first = daemons("source_daemon", *source_args(loop_kind, ram_mib=32), name="first")
    second = daemons("source_daemon", *source_args(loop_kind, ram_mib=32), name="second")
    dest = daemons("dest_daemon", *dest_args(loop_kind))
    await migrate(
        first,
        dest,
        parameters={"max-bandwidth": 3_000_000, "downtime-limit": 1},
        wait_for=frozenset({"active"}),
    )

    info = await migrate(second, dest)

    assert "failed" == info["status"]
    assert "already receiving" in info["error-desc"]
    async with qmp(second) as client:
        assert (await client.execute("query-status"))["running"]


async def next_migration_status(client, timeout_s: float = 60.0) -> str:
    """The status of the next MIGRATION event (consumed)."""
    event = await client.wait_event("MIGRATION", timeout_s)
    return str(event.data["status"])


async def migration_statuses_until(client, last: str, statuses: list[str]) -> None:
    """Append MIGRATION statuses to ``statuses`` until ``last`` (or a final status) arrives."""
    while not statuses or statuses[-1] != last:
        statuses.append(await next_migration_status(client))
        if statuses[-1] in FINAL:
            break


# QEMU's /migration/cancel/src/after/<state>. The MIGRATION events a source emits, in order:
# "cancelling" is set by migrate_cancel itself and lasts until the migration task has resumed
# the VM (one turn of the event loop here), so it is reached, as in QEMU's test, by waiting for
# its event; the second migrate_cancel then finds "cancelling" or "cancelled" and must change
# nothing (no error, no further event).
CANCEL_CASES = {
    "setup": ("setup", ["setup", "cancelling", "cancelled"]),
    "active": ("active", ["setup", "active", "cancelling", "cancelled"]),
    "pre-switchover": (
        "pre-switchover",
        ["setup", "active", "pre-switchover", "cancelling", "cancelled"],
    ),
    "cancelling": ("cancelling", ["setup", "active", "cancelling", "cancelled"]),
    "cancelled": ("cancelled", ["setup", "active", "cancelling", "cancelled"]),
    "completed": ("completed", ["setup", "active", "device", "completed"]),
}


@pytest.mark.parametrize("state", list(CANCEL_CASES))
async def test_cancel_in_each_state(daemons, loop_kind, state) -> None:
    """migrate_cancel in (or after) each state: cancelled, the VM runs on the source, unchanged.

    Before the handover the source resumes its VM (digest = replay) and the destination
    discards; after completion migrate_cancel is a no-op. Each state is reached by waiting for
    its MIGRATION event: setup by a stopped destination (the kernel accepts, OPEN_ACK never
    comes), active by 3 MB/s and a 1 ms downtime limit (it cannot converge), pre-switchover by
    the capability of that name (the VM is stopped, waiting for migrate-continue).
    """
    reach, expected_events = CANCEL_CASES[state]
    first_cancel_at = state if state in ("setup", "pre-switchover") else "active"
    source = daemons("source_daemon", *source_args(loop_kind, ram_mib=32))
    dest = daemons("dest_daemon", *dest_args(loop_kind))
    caps = {
        "events": True,
        "x-digest-check": True,
        "pause-before-switchover": state == "pre-switchover",
    }
    params: dict[str, object] = {"max-bandwidth": 3_000_000, "downtime-limit": 1}
    if state in ("pre-switchover", "completed"):
        params = {}
    if state == "setup":
        params["x-peer-timeout-ms"] = 120_000  # the stopped destination must not time out
        dest.signal(19)  # SIGSTOP
    statuses: list[str] = []
    try:
        async with qmp(source) as src:
            await src.execute(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": n, "state": v} for n, v in caps.items()]},
            )
            if params:
                await src.execute("migrate-set-parameters", params)
            await src.execute("migrate", {"uri": dest.incoming_uri})

            if state == "completed":
                await migration_statuses_until(src, "completed", statuses)
                assert {} == await src.execute("migrate_cancel")
            else:
                await migration_statuses_until(src, first_cancel_at, statuses)
                before = await src.execute("query-migrate")
                assert first_cancel_at == before["status"], before
                if state == "pre-switchover":
                    assert not (await src.execute("query-status"))["running"]
                assert {} == await src.execute("migrate_cancel")
                await migration_statuses_until(src, reach, statuses)
                if state in ("cancelling", "cancelled"):
                    assert {} == await src.execute("migrate_cancel")  # again: changes nothing
                await migration_statuses_until(src, "cancelled", statuses)
            with pytest.raises(QMPTimeoutError):  # nothing more happens
                await src.wait_event("MIGRATION", 0.5)
            info = await src.execute("query-migrate")
            status = await src.execute("query-status")
            if state != "completed":
                await asyncio.sleep(0.3)  # the resumed VM keeps running
                vm = await stopped_vm(src)
    finally:
        if state == "setup":
            dest.signal(18)  # SIGCONT

    assert expected_events == statuses
    if state == "completed":
        assert "completed" == info["status"], info
        assert {"status": "postmigrate", "running": False} == status
        async with qmp(dest) as dst:
            assert (await dst.execute("query-status"))["running"]
            assert_matches_replay(await stopped_vm(dst))
        return
    assert "cancelled" == info["status"], info
    assert "error-desc" not in info, info  # QEMU: a cancel is not an error
    assert {"status": "running", "running": True} == status
    assert_matches_replay(vm)
    async with qmp(dest) as dst:
        outcome = {"migration-id": info["x-migration-id"]}
        async with asyncio.timeout(20):
            while (
                "discarded" != (await dst.execute("x-query-migration-outcome", outcome))["outcome"]
            ):
                await asyncio.sleep(0.05)
        assert "failed" == (await dst.execute("query-migrate"))["status"]
        assert not (await dst.execute("query-status"))["running"]


async def test_qemu_qmp_library_drives_a_migration(daemons, loop_kind) -> None:
    """QEMU's own Python QMP client negotiates, migrates, and receives events."""
    source = daemons("source_daemon", *source_args(loop_kind))
    dest = daemons("dest_daemon", *dest_args(loop_kind))
    client = QemuQMPClient("test")
    host, port = source.qmp_address.removeprefix("tcp:").rsplit(":", 1)
    await client.connect((host, int(port)))
    try:
        await client.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "events", "state": True}]},
        )
        with client.listener("MIGRATION") as listener:
            await client.execute("migrate", {"uri": dest.incoming_uri})
            statuses = []
            async with asyncio.timeout(60):
                async for event in listener:
                    statuses.append(event["data"]["status"])
                    if event["data"]["status"] in FINAL:
                        break
        info = await client.execute("query-migrate")
    finally:
        await client.disconnect()

    assert "completed" == info["status"]
    assert ["setup", "active", "device", "completed"] == statuses


async def test_file_migration_analyze_and_restore(daemons, loop_kind, tmp_path) -> None:
    """`migrate file:` writes a stream that `livemig analyze` reads and a daemon loads."""
    path = tmp_path / "vm.stream"
    source = daemons("source_daemon", *source_args(loop_kind, ram_mib=16, workload="ab"))
    async with qmp(source) as src:
        await src.execute("migrate", {"uri": f"file:{path}"})
        info = await wait_status(src, FINAL)
        assert "completed" == info["status"], info
        original = await src.execute("x-query-vm")

    analyzer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livemig", "analyze", str(path), stdout=subprocess.PIPE
    )
    stdout, _ = await analyzer.communicate()
    assert 0 == analyzer.returncode
    report = json.loads(stdout)
    assert "error" not in report
    assert 16 * 1024 * 1024 == report["configuration"]["ram_size"]

    restored = daemons("dest_daemon", "--qmp", "tcp:127.0.0.1:0", "--loop", loop_kind, "-S")
    async with qmp(restored) as client:
        await client.execute("migrate-incoming", {"uri": f"file:{path}"})
        await wait_status(client, FINAL)
        vm = await client.execute("x-query-vm")
    assert original["digest"] == vm["digest"]
    assert original["ticks"] == vm["ticks"]
