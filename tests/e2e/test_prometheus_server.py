"""Debian's real Prometheus scrapes both daemons; PromQL through its HTTP API agrees with QMP.

Also `promtool check metrics`: the exposition follows Prometheus' naming rules. Skipped, with
the reason, where the `prometheus` package is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.e2e.conftest import FINAL, dest_args, qmp, source_args, wait_status
from tests.helpers.http import http_get, promql

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from livemig.daemons import DaemonProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("prometheus") is None or shutil.which("promtool") is None,
        reason="needs Debian's prometheus package (apt-get install prometheus; .ci/run does)",
    ),
]
SCRAPE_INTERVAL_S = 1


def metrics_address(daemon: DaemonProcess) -> str:
    addresses = daemon.ready.get("metrics")
    assert isinstance(addresses, list)
    assert addresses
    return str(addresses[0]).removeprefix("tcp:")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus whose targets file the test fills; (its host:port, the targets file)."""
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: livemig\n    file_sd_configs:\n"
        f"      - files: ['{targets}']\n        refresh_interval: 1s\n"
    )
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={address}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield address, targets
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


async def test_prometheus_sees_what_query_migrate_reported(daemons, prometheus) -> None:
    address, targets = prometheus
    scrape = ("--metrics", "tcp:127.0.0.1:0")
    source = daemons("source_daemon", *source_args("uvloop"), *scrape)
    dest = daemons("dest_daemon", *dest_args("uvloop", *scrape))
    targets.write_text(json.dumps([{"targets": [metrics_address(source), metrics_address(dest)]}]))
    await promql(address, 'livemig_vm_running{role="source"} == 1')

    async with qmp(source) as client:
        await client.execute("migrate", {"uri": dest.incoming_uri})
        info = await wait_status(client, FINAL)
    assert "completed" == info["status"]
    transferred = info["ram"]["transferred"]

    query = f'livemig_migration_transferred_bytes{{side="source"}} == {transferred}'
    [sample] = await promql(address, query)
    assert float(sample["value"][1]) == transferred  # type: ignore[index]
    ended = 'livemig_migrations_ended_total{side="destination",outcome="completed"} == 1'
    assert await promql(address, ended)
    assert await promql(address, 'livemig_vm_running{role="destination"} == 1')


async def test_the_exposition_passes_promtool(daemons) -> None:
    source = daemons("source_daemon", *source_args("uvloop"), "--metrics", "tcp:127.0.0.1:0")
    body = await http_get(metrics_address(source), "/metrics")
    check = await asyncio.create_subprocess_exec(
        "promtool",
        "check",
        "metrics",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(check.communicate(body), 30)
    assert 0 == check.returncode, out + err
    assert b"" == out.strip(), out  # no lint warnings either
