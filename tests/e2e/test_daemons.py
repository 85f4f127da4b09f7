"""Daemon behaviour a user relies on: rate limits, vCPU pacing, signals, tools, the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import FINAL, dest_args, qmp, source_args, wait_status
from vmsim import MachineConfig, replay

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
VENV_BIN = Path(sys.executable).parent


async def test_max_bandwidth_is_honoured_within_ten_percent(daemons) -> None:
    """Over every one-second window the transfer stays within 10% of max-bandwidth."""
    limit = 20_000_000
    source = daemons("source_daemon", *source_args("uvloop", ram_mib=128))
    dest = daemons("dest_daemon", *dest_args("uvloop"))
    samples: list[tuple[float, int]] = []
    async with qmp(source) as client:
        await client.execute("migrate-set-parameters", {"max-bandwidth": limit})
        await client.execute("migrate", {"uri": dest.incoming_uri})
        await wait_status(client, frozenset({"active"}))
        for _ in range(16):
            info = await client.execute("query-migrate")
            samples.append((time.monotonic(), info["ram"]["transferred"]))
            await asyncio.sleep(0.25)
        await client.execute("migrate_cancel")

    rates = [
        (samples[j][1] - samples[i][1]) / (samples[j][0] - samples[i][0])
        for i in range(len(samples))
        for j in range(i + 1, len(samples))
        if samples[j][0] - samples[i][0] >= 0.95
    ]
    assert rates
    assert max(rates) <= limit * 1.10, max(rates)
    assert min(rates) >= limit * 0.90, min(rates)


async def test_vcpu_keeps_its_rate_during_a_full_speed_migration(daemons) -> None:
    """Migration at full speed on the same two cores does not starve the guest."""
    rate = 1_000_000  # an A-B sweep of 256 MiB 15 times a second: it cannot converge at 10 ms
    source = daemons(
        "source_daemon",
        *source_args("uvloop", ram_mib=256, workload="ab", dirty_rate=rate),
        name="source",
    )
    dest = daemons("dest_daemon", *dest_args("uvloop"))
    measured = []
    async with qmp(source) as client:
        await client.execute("migrate-set-parameters", {"downtime-limit": 10})
        await client.execute("migrate", {"uri": dest.incoming_uri})
        await wait_status(client, frozenset({"active"}))
        await asyncio.sleep(1.5)
        first = (await client.execute("query-migrate"))["ram"]["transferred"]
        for _ in range(6):
            info = await client.execute("query-migrate")
            measured.append(info["ram"]["x-page-writes-per-second"])
            await asyncio.sleep(0.25)
        sent = info["ram"]["transferred"] - first
        await client.execute("migrate_cancel")

    assert "active" == info["status"]
    assert sent > 1024 * 1024 * 1024  # over 1 GB/s went out meanwhile: the sender was not starved
    assert min(measured) >= 0.9 * rate, measured


async def test_sigterm_stops_a_daemon_cleanly(daemons) -> None:
    source = daemons("source_daemon", *source_args("uvloop"))
    source.signal(signal.SIGTERM)

    assert 0 == source.process.wait(timeout=10)
    assert any(line.get("event") == "daemon_stopped" for line in source.lines)


async def test_qmp_shell_drives_a_daemon(daemons) -> None:
    """QEMU's own qmp-shell connects, negotiates and runs a command."""
    source = daemons("source_daemon", *source_args("uvloop"))
    address = source.qmp_address.removeprefix("tcp:")
    shell = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "qmp-shell"),
        address,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(shell.communicate(b"query-status\n"), 30)

    assert b'"status": "running"' in output, output


async def test_return_path_off_is_refused_for_sockets(daemons) -> None:
    source = daemons("source_daemon", *source_args("uvloop"))
    dest = daemons("dest_daemon", *dest_args("uvloop"))
    async with qmp(source) as client:
        await client.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "return-path", "state": False}]},
        )
        with pytest.raises(Exception, match="needs the return path"):
            await client.execute("migrate", {"uri": dest.incoming_uri})
        assert (await client.execute("query-status"))["running"]


async def test_livemig_cli_migrates_and_replay_agrees(daemons, tmp_path) -> None:
    """`livemig migrate` as a user runs it, then `livemig replay` of the migrated VM."""
    source = daemons("source_daemon", *source_args("uvloop", workload="hotset"))
    dest = daemons("dest_daemon", *dest_args("uvloop"))
    migrate = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "livemig"),
        "migrate",
        "--from",
        source.qmp_address,
        "--to",
        dest.incoming_uri,
        "--set",
        "downtime-limit=100",
        "--cap",
        "x-digest-check=on",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await migrate.communicate()
    assert 0 == migrate.returncode, stderr
    assert b"status:        completed" in stdout
    assert b"remaining" in stderr  # the progress went to stderr

    async with qmp(dest) as client:
        await client.execute("stop")
        vm = await client.execute("x-query-vm")
        info = await wait_status(client, FINAL)
    assert "completed" == info["status"]
    config = tmp_path / "vm.json"
    config.write_text(json.dumps(vm))  # a whole x-query-vm reply is accepted as the config
    replay = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "livemig"),
        "replay",
        "--config",
        str(config),
        "--ticks",
        str(vm["ticks"]),
        stdout=subprocess.PIPE,
    )
    out, _ = await replay.communicate()

    assert {"ticks": vm["ticks"], "digest": vm["digest"]} == json.loads(out)


async def _livemig_migrate(source, dest, *flags: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "livemig"),
        "migrate",
        "--from",
        source.qmp_address,
        "--to",
        dest.incoming_uri,
        *flags,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_livemig_cli_convergence_flags(daemons) -> None:
    """A guest beyond its link: a timeout gives up on time, then --auto-converge completes."""
    source = daemons("source_daemon", *source_args("uvloop", ram_mib=4, workload="ab"))
    dest = daemons("dest_daemon", *dest_args("uvloop"))
    link = ["--set", "max-bandwidth=16000000", "--set", "downtime-limit=50"]

    # 4 MiB at 256 s per GiB: one second.
    code, out, _ = await _livemig_migrate(
        source, dest, *link, "--completion-timeout-per-gib", "256", "--timeout-action", "cancel"
    )
    assert 1 == code
    assert "status:        failed" in out
    assert "policy:        x-completion-timeout-per-gib expired at" in out

    flags = ["--auto-converge", "--set", "cpu-throttle-initial=90", "--timeout-action", "throttle"]
    code, out, err = await _livemig_migrate(
        source, dest, *link, "--completion-timeout-per-gib", "0", *flags
    )
    assert 0 == code, err
    assert "status:        completed" in out
    assert "throttled:     from pass" in out
    # Not asserted: "throttle 90%" in a progress line. Piped, the CLI samples every 0.5 s,
    # and here the throttled passes can all fall between two samples (CI, 2026-12-03);
    # tests/unit/livemig/test_progress.py checks the line shows a throttle in force.
    async with qmp(source) as client:
        parameters = await client.execute("query-migrate-parameters")
    assert "throttle" == parameters["x-timeout-action"]


async def test_livemig_cli_multifd_flag(daemons) -> None:
    """`livemig migrate --multifd 3` between daemon processes: pages on three more connections."""
    source = daemons("source_daemon", *source_args("uvloop", ram_mib=32))
    dest = daemons("dest_daemon", *dest_args("uvloop"))
    code, out, err = await _livemig_migrate(
        source, dest, "--multifd", "3", "--cap", "x-digest-check=on"
    )
    assert 0 == code, err
    assert "status:        completed" in out
    async with qmp(source) as client:
        info = await client.execute("query-migrate")
        parameters = await client.execute("query-migrate-parameters")
    ram = info["ram"]
    assert 32 << 20 < ram["multifd-bytes"] < ram["transferred"]  # the main stream: the rest
    assert 3 == parameters["multifd-channels"]
    async with qmp(dest) as client:
        assert (await client.execute("query-status"))["running"]


async def test_livemig_cli_postcopy_flag(daemons) -> None:
    """`livemig migrate --postcopy` between daemon processes: a guest precopy cannot converge
    (1 ms limit) switches after its first pass and equals the replay."""
    busy = {"workload": "ab", "dirty_rate": 1_000_000}  # all of its RAM 60 times a second
    source = daemons("source_daemon", *source_args("uvloop", ram_mib=64, **busy))
    dest = daemons("dest_daemon", *dest_args("uvloop"))
    code, out, err = await _livemig_migrate(source, dest, "--postcopy", "--set", "downtime-limit=1")
    assert 0 == code, err
    assert "status:        completed" in out
    assert "postcopy:" in out
    async with qmp(source) as client:
        info = await client.execute("query-migrate")
    assert info["ram"]["postcopy-bytes"] > 0
    assert info["ram"]["dirty-sync-count"] >= 2  # the switch came after the first pass
    async with qmp(dest) as client:
        dest_info = await client.execute("query-migrate")
        await client.execute("stop")
        vm = await client.execute("x-query-vm")
    assert dest_info["postcopy-blocktime"] >= 0
    config = MachineConfig.from_dict(vm["config"])
    assert replay(config, vm["ticks"]) == vm["digest"]


async def test_metrics_flag_serves_prometheus_text(daemons) -> None:
    """`--metrics` on a real daemon: `curl`able, in the text format, with the VM's figures."""
    source = daemons("source_daemon", *source_args("uvloop"), "--metrics", "tcp:127.0.0.1:0")
    addresses = source.ready.get("metrics")
    assert isinstance(addresses, list)
    assert 1 == len(addresses)
    host, port = str(addresses[0]).removeprefix("tcp:").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()

    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Type: text/plain; version=" in head
    assert b'livemig_vm_running{role="source",vm_uuid="' in body
    assert b"# TYPE livemig_migrations_started_total counter" in body


async def test_metrics_flag_refuses_a_unix_address(daemons, tmp_path) -> None:
    """A bad `--metrics` address is a clear start-up error, not a daemon without metrics."""
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "source_daemon",
        *source_args("uvloop"),
        "--metrics",
        f"unix:{tmp_path / 'm.sock'}",
        stderr=subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(done.communicate(), 30)

    assert 0 != done.returncode
    assert b"--metrics takes tcp:HOST:PORT" in stderr
