"""Both daemons as real processes over real TCP: migrations end in the state a replay predicts."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys

import pytest
from qemu.qmp import QMPClient as QemuQMPClient

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


@pytest.mark.parametrize(
    "state", ["setup", "active", "pre-switchover", "cancelling", "cancelled", "completed"]
)
async def test_cancel_in_each_state(daemons, loop_kind, state) -> None:
    """QEMU's /migration/cancel/src/after/<state>: the source keeps (or gets back) its VM."""
    source = daemons("source_daemon", *source_args(loop_kind, ram_mib=32))
    dest = daemons("dest_daemon", *dest_args(loop_kind))
    caps = {"pause-before-switchover": state == "pre-switchover"}
    slow = {"max-bandwidth": 3_000_000, "downtime-limit": 1}
    if state == "setup":
        dest.signal(19)  # SIGSTOP: the kernel accepts, the daemon never acknowledges
        wait_for = frozenset({"setup"})
    elif state == "completed":
        wait_for, slow = FINAL, {}
    elif state == "pre-switchover":
        wait_for, slow = frozenset({"pre-switchover"}), {}
    else:
        wait_for = frozenset({"active"})
    await migrate(source, dest, capabilities=caps, parameters=slow, wait_for=wait_for)

    async with qmp(source) as src:
        await src.execute("migrate_cancel")
        if state in ("cancelling", "cancelled"):
            await src.execute("migrate_cancel")  # repeated: harmless
        info = await wait_status(src, FINAL)
        status = await src.execute("query-status")
    dest.signal(18)  # SIGCONT

    if state == "completed":
        assert "completed" == info["status"]
        assert "postmigrate" == status["status"]
        return
    assert "cancelled" == info["status"], info
    assert {"status": "running", "running": True} == status
    async with qmp(dest) as dst:
        info = await wait_status(dst, frozenset({"failed", "none"}), timeout_s=20)
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
