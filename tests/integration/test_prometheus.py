"""`--metrics`: what Prometheus scrapes from each daemon equals what `query-migrate` reports.

Real HTTP over loopback to the daemons' metrics servers, parsed with prometheus_client's own
text-format parser; a migration there and back moves the figures on both sides.
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.http import http_get, http_request
from tests.helpers.inproc import FINAL, Daemon, make_pair
from vmm.prometheus import MetricsServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: MetricsServer) -> Samples:
    body = (await http_get(server.addresses[0])).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample named `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def metrics_of(daemon: Daemon) -> MetricsServer:
    server = MetricsServer(daemon.vmm)
    await server.start("tcp:127.0.0.1:0")
    return server


def test_scrapes_follow_a_migration_there_and_back(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        servers = [await metrics_of(pair.source), await metrics_of(pair.dest)]
        try:
            before = await scrape(servers[0])
            assert 1 == value(before, "livemig_vm_running")
            assert 0 == value(before, "livemig_migrations_started_total", side="source")

            await pair.migrate()
            await pair.source.wait(FINAL)
            await pair.dest.wait({"completed"})
            info = await pair.source.execute("query-migrate")
            assert isinstance(info, dict)
            source, dest = await scrape(servers[0]), await scrape(servers[1])

            ram = info["ram"]
            transferred = value(source, "livemig_migration_transferred_bytes", side="source")
            assert ram["transferred"] == transferred > 0
            assert value(dest, "livemig_migration_transferred_bytes", side="destination") > 0
            assert info["downtime"] / 1000 == value(source, "livemig_migration_downtime_seconds")
            assert 1 == value(source, "livemig_migration_status", status="completed")
            assert 1 == value(source, "livemig_migrations_started_total", side="source")
            assert 1 == value(
                source, "livemig_migrations_ended_total", side="source", outcome="completed"
            )
            assert 1 == value(
                dest, "livemig_migrations_ended_total", side="destination", outcome="completed"
            )
            assert 0 == value(source, "livemig_vm_running")
            assert 1 == value(dest, "livemig_vm_running")
            uuid = pair.dest.vmm.vm_uuid()
            assert uuid is not None
            assert {uuid} == {dict(labels).get("vm_uuid") for _, labels in dest}
        finally:
            for server in servers:
                await server.close()
            await pair.close()

    run(main)


def test_bad_requests_get_clear_answers_and_harm_nothing(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        server = await metrics_of(pair.source)
        try:
            assert 404 == (await http_request(server.addresses[0], "/"))[0]
            assert 405 == (await http_request(server.addresses[0], method="POST"))[0]
            host, port = server.addresses[0].removeprefix("tcp:").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)  # no end of head
            await writer.drain()
            assert (await reader.read()).startswith(b"HTTP/1.1 400")
            writer.close()
            assert await pair.source.runs()
            assert 1 == value(await scrape(server), "livemig_vm_running")
        finally:
            await server.close()
            await pair.close()

    run(main)


def test_the_figures_move_during_a_migration_on_both_daemons(run, tmp):
    """Scraped twice while a rate-limited migration runs: both sides' bytes go up."""

    async def main() -> None:
        pair = await make_pair(tmp)
        servers = [await metrics_of(pair.source), await metrics_of(pair.dest)]
        try:
            await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 8 << 20})
            await pair.migrate()
            await pair.source.wait({"active"})
            await asyncio.sleep(0.2)  # past the first bandwidth window
            first = [await scrape(server) for server in servers]
            await asyncio.sleep(0.3)
            second = [await scrape(server) for server in servers]
            assert "active" == await pair.source.status()  # 8 MiB at 8 MiB/s: still running
            for side, before, after in zip(("source", "destination"), first, second, strict=True):
                name = "livemig_migration_transferred_bytes"
                assert value(before, name, side=side) < value(after, name, side=side), side
            assert 1 == value(second[0], "livemig_migration_status", status="active")
            assert 0 < value(second[0], "livemig_migration_remaining_bytes")
            assert 0 < value(second[0], "livemig_migration_bandwidth_bytes_per_second")
            await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 0})
            assert "completed" == await pair.source.wait(FINAL)
        finally:
            for server in servers:
                await server.close()
            await pair.close()

    run(main)


def test_failed_migrations_are_counted_by_cause(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        server = await metrics_of(pair.source)
        try:
            await pair.source.execute("migrate", {"uri": "tcp:127.0.0.1:1"})
            assert "failed" == await pair.source.wait(FINAL)
            samples = await scrape(server)
            failed = "livemig_migrations_failed_total"
            assert 1 == value(samples, failed, side="source", cause="cannot-connect")
            ended = "livemig_migrations_ended_total"
            assert 1 == value(samples, ended, side="source", outcome="failed")
            await pair.migrate()  # then a good one: no failure is added
            assert "completed" == await pair.source.wait(FINAL)
            samples = await scrape(server)
            assert [1.0] == [v for (n, _), v in samples.items() if n == failed]
        finally:
            await server.close()
            await pair.close()

    run(main)
