"""Our QMP client (netio/qmp/client.py) against our server and against misbehaving servers."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from netio import TcpAddress, bound_address, listen
from netio.qmp import (
    QMPClient,
    QMPCommandError,
    QMPConnectionError,
    QMPEvent,
    QMPTimeoutError,
)
from tests.unit.netio.qmp_fixtures import VERSION, serving


def test_connect_greet_execute(run):
    async def main():
        async with serving() as (_server, address, _commands):
            client = await QMPClient.connect(str(address), timeout_s=5)
            async with client:
                greeting = await client.greeting()
                assert {"version": VERSION.to_json(), "capabilities": []} == greeting["QMP"]
                assert VERSION.to_json() == await client.execute("query-version")
                assert {"value": [1, 2]} == await client.execute("echo", {"value": [1, 2]})

    run(main)


def test_command_errors_carry_class_and_desc(run):
    async def main():
        async with serving() as (_server, address, _commands):
            client = await QMPClient.connect(address)
            with pytest.raises(QMPCommandError) as caught:
                await client.execute("fail")
            await client.close()

        error = caught.value
        assert ("fail", "DeviceNotActive", "No migration is in progress") == (
            error.command,
            error.error_class,
            error.desc,
        )
        assert "fail: No migration is in progress (DeviceNotActive)" == str(error)

    run(main)


def test_without_negotiation_the_server_refuses_commands(run):
    async def main():
        async with serving() as (_server, address, _commands):
            client = await QMPClient.connect(address, negotiate=False)
            with pytest.raises(QMPCommandError, match="Expecting capabilities negotiation"):
                await client.execute("query-version")
            assert {} == await client.execute("qmp_capabilities")
            await client.close()

    run(main)


def test_concurrent_executes_are_matched_by_id(run):
    async def main():
        async with serving() as (_server, address, _commands):
            client = await QMPClient.connect(address)
            results = await asyncio.gather(
                *(client.execute("echo", {"value": i}) for i in range(20))
            )
            await client.close()

        assert [{"value": i} for i in range(20)] == results

    run(main)


def test_wait_event_with_predicate_leaves_other_events(run):
    async def main():
        async with serving() as (server, address, _commands):
            client = await QMPClient.connect(address)
            for status in ("setup", "active", "completed"):
                server.emit_event("MIGRATION", {"status": status})
            server.emit_event("RESUME")
            event = await client.wait_event(
                "MIGRATION", timeout_s=5, predicate=lambda e: e.data["status"] == "completed"
            )
            assert {"status": "completed"} == event.data
            assert event.timestamp_s > 0

            rest = []
            async with asyncio.timeout(5):
                async for other in client.events():
                    rest.append((other.name, dict(other.data)))
                    if len(rest) == 3:
                        break
            assert [
                ("MIGRATION", {"status": "setup"}),
                ("MIGRATION", {"status": "active"}),
                ("RESUME", {}),
            ] == rest

            with pytest.raises(QMPTimeoutError, match=r"no STOP event within 0\.05 s"):
                await client.wait_event("STOP", timeout_s=0.05)
            await client.close()

    run(main)


def test_events_iteration_ends_when_the_server_closes(run):
    async def main():
        async with serving() as (server, address, _commands):
            client = await QMPClient.connect(address)
            server.emit_event("STOP")
            await client.wait_event("STOP", timeout_s=5)
            server.emit_event("RESUME")
            await asyncio.sleep(0.05)
            await server.close()
            names = [event.name async for event in client.events()]

            assert ["RESUME"] == names
            with pytest.raises(QMPConnectionError, match="closed by the server"):
                await client.execute("echo")
            with pytest.raises(QMPConnectionError):
                await client.wait_event("STOP", timeout_s=1)
            await client.close()

    run(main)


def test_pending_command_fails_when_the_connection_is_lost(run):
    async def main():
        async with serving() as (server, address, commands):
            client = await QMPClient.connect(address)
            pending = asyncio.ensure_future(client.execute("slow"))
            await commands.slow_started.wait()
            await server.close()

            with pytest.raises(QMPConnectionError):
                await pending
            await client.close()

    run(main)


def test_execute_timeout_and_late_reply_is_dropped(run):
    async def main():
        async with serving() as (_server, address, commands):
            client = await QMPClient.connect(address)
            with pytest.raises(QMPTimeoutError, match=r"slow: no reply within 0\.05 s"):
                await client.execute("slow", timeout_s=0.05)
            with structlog.testing.capture_logs() as logs:
                commands.release.set()
                assert {"value": 1} == await client.execute("echo", {"value": 1})
            assert ["qmp_reply_unmatched"] == [e["event"] for e in logs]
            await client.close()

    run(main)


def test_connect_refused(run):
    async def main():
        listener = listen(TcpAddress(host="127.0.0.1", port=0))
        address = bound_address(listener)
        listener.close()
        with pytest.raises(QMPConnectionError, match=r"cannot connect to QMP at tcp:127\.0\.0\.1"):
            await QMPClient.connect(address, timeout_s=2)

    run(main)


async def fake_server(
    greeting: bytes, finished: asyncio.Event
) -> tuple[asyncio.Server, TcpAddress]:
    async def handle(reader, writer):
        try:
            writer.write(greeting)
            await reader.read()
            writer.close()
        finally:
            finished.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, TcpAddress(host="127.0.0.1", port=port)


@pytest.mark.parametrize(
    ("greeting", "message"),
    [
        (b'{"hello": "world"}\r\n', "did not greet with a QMP greeting"),
        (b"", "did not complete the handshake"),
    ],
)
def test_a_server_that_does_not_speak_qmp(run, greeting, message):
    async def main():
        finished = asyncio.Event()
        server, address = await fake_server(greeting, finished)
        async with server:
            with pytest.raises(QMPConnectionError, match=message):
                await QMPClient.connect(address, timeout_s=0.3)
            await finished.wait()

    run(main)


def test_event_from_message_tolerates_missing_fields():
    event = QMPEvent.from_message({"event": "STOP"})

    assert QMPEvent(name="STOP", data={}, timestamp_s=0.0) == event
