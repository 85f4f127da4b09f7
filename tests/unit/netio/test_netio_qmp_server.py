"""QMPServer driven by QEMU's own client library (qemu.qmp) and by raw sockets."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import structlog
from qemu.qmp import ExecuteError
from qemu.qmp import QMPClient as QemuQMPClient

from netio import TcpAddress, UnixAddress
from netio.qmp import Args, CommandRegistry, QMPServer
from tests.unit.netio.qmp_fixtures import VERSION, RawClient, serving

NEGOTIATE_FIRST = "Expecting capabilities negotiation with 'qmp_capabilities'"


async def wait_for_no_clients(server: QMPServer) -> None:
    async with asyncio.timeout(5):
        while server.client_count:
            await asyncio.sleep(0.01)


async def qemu_client(address) -> QemuQMPClient:
    client = QemuQMPClient("test")
    target = (address.host, address.port) if isinstance(address, TcpAddress) else address.path
    await client.connect(target)
    return client


# --------------------------------------------------------------------------- qemu.qmp


def test_qemu_qmp_client_connects_negotiates_and_executes(run):
    async def main():
        async with serving() as (_server, address, _commands):
            client = await qemu_client(address)
            greeting = client.greeting
            assert greeting is not None
            assert {
                "qemu": {"major": 10, "minor": 2, "micro": 0},
                "package": "livemig-test",
            } == greeting.QMP.version
            assert [] == list(greeting.QMP.capabilities)  # no OOB offered
            assert VERSION.to_json() == await client.execute("query-version")
            assert {"value": "hi"} == await client.execute("echo", {"value": "hi"})
            assert {"value": None} == await client.execute("echo")
            await client.disconnect()

    run(main)


def test_qemu_qmp_sees_errors_as_execute_error(run):
    async def main():
        async with serving() as (_server, address, _commands):
            client = await qemu_client(address)
            cases = [
                ("nope", None, "CommandNotFound", "The command nope has not been found"),
                ("fail", None, "DeviceNotActive", "No migration is in progress"),
                ("echo", {"foo": 1}, "GenericError", "Parameter 'foo' is unexpected"),
                ("crash", None, "GenericError", "boom"),
                (
                    "bad-return",
                    None,
                    "GenericError",
                    "internal error: bad-return returned a value that is not JSON",
                ),
                (
                    "qmp_capabilities",
                    None,
                    "CommandNotFound",
                    "Capabilities negotiation is already complete, command ignored",
                ),
            ]
            with structlog.testing.capture_logs() as logs:
                for name, arguments, error_class, desc in cases:
                    with pytest.raises(ExecuteError) as caught:
                        await client.execute(name, arguments)
                    assert (error_class, desc) == (caught.value.error_class, str(caught.value))
            assert {"qmp_command_failed", "qmp_result_not_json"} <= {e["event"] for e in logs}
            await client.disconnect()

    run(main)


def test_qemu_qmp_receives_events_with_wall_clock_timestamps(run):
    async def main():
        async with serving() as (server, address, _commands):
            client = await qemu_client(address)
            before = time.time()
            server.emit_event("STOP")
            server.emit_event("MIGRATION", {"status": "active"})
            events = []
            async with asyncio.timeout(5):
                async for event in client.events:
                    events.append(event)
                    if len(events) == 2:
                        break
            after = time.time()
            await client.disconnect()

        assert ["STOP", "MIGRATION"] == [e["event"] for e in events]
        assert "data" not in events[0]
        assert {"status": "active"} == events[1]["data"]
        stamp = events[1]["timestamp"]
        assert before - 1 <= stamp["seconds"] + stamp["microseconds"] / 1e6 <= after + 1
        assert 0 <= stamp["microseconds"] < 1_000_000

    run(main)


def test_query_commands_lists_builtins_and_registered_commands(run):
    async def main():
        async with serving() as (_server, address, _commands):
            client = await qemu_client(address)
            names = [entry["name"] for entry in await client.execute("query-commands")]
            await client.disconnect()

        assert ["qmp_capabilities", "query-commands", "query-version"] == names[:3]
        assert {"echo", "slow", "fail", "early"} <= set(names)

    run(main)


def test_unix_listener_and_several_listeners(run, sock_dir):
    async def main():
        path = str(sock_dir / "qmp.sock")
        async with serving(f"unix:{path},server=on,wait=off") as (server, address, _commands):
            tcp = await server.start(TcpAddress(host="127.0.0.1", port=0))
            assert UnixAddress(path=path) == address
            assert [address, tcp] == server.addresses
            for target in (address, tcp):
                client = await qemu_client(target)
                assert {"value": 1} == await client.execute("echo", {"value": 1})
                await client.disconnect()
        assert not (sock_dir / "qmp.sock").exists()

    run(main)


# --------------------------------------------------------------------------- concurrency


def test_slow_command_delays_only_its_own_client(run):
    async def main():
        async with serving() as (server, address, commands):
            slow_client = await qemu_client(address)
            other = await qemu_client(address)
            slow = asyncio.ensure_future(slow_client.execute("slow"))
            await commands.slow_started.wait()

            assert {"value": 2} == await other.execute("echo", {"value": 2})
            server.emit_event("RESUME")
            async with asyncio.timeout(5):
                for client in (slow_client, other):
                    assert "RESUME" == (await client.events.get())["event"]
            assert not slow.done()
            commands.release.set()
            assert "slow done" == await slow
            await slow_client.disconnect()
            await other.disconnect()

    run(main)


def test_pipelined_requests_are_answered_in_order(run):
    async def main():
        async with serving() as (_server, address, commands):
            raw = await RawClient.connect(address)
            await raw.greet_and_negotiate()
            raw.send(b'{"execute": "slow", "id": 1}{"execute": "echo", "id": 2}')
            await commands.slow_started.wait()
            await asyncio.sleep(0.05)
            commands.release.set()

            assert {"return": "slow done", "id": 1} == await raw.read()
            assert {"return": {"value": None}, "id": 2} == await raw.read()
            await raw.close()

    run(main)


def test_client_count_callback_and_events_reach_every_negotiated_client(run):
    async def main():
        counts: list[int] = []
        async with serving(on_client_count_change=counts.append) as (server, address, _c):
            first = await RawClient.connect(address)
            await first.greet_and_negotiate()
            second = await RawClient.connect(address)
            await second.read()  # greeting only: still negotiating
            assert 2 == server.client_count
            server.emit_event("SHUTDOWN", {"guest": False})

            assert "SHUTDOWN" == (await first.read())["event"]
            assert {"return": {}} == await second.request({"execute": "qmp_capabilities"})
            server.emit_event("POWERDOWN")
            assert "POWERDOWN" == (await first.read())["event"]
            assert "POWERDOWN" == (await second.read())["event"]  # SHUTDOWN was not sent
            await first.close()
            await second.close()
            await wait_for_no_clients(server)

        assert [1, 2, 1, 0] == counts

    run(main)


# --------------------------------------------------------------------------- negotiation


def test_commands_before_negotiation_are_refused_like_qemu(run):
    async def main():
        async with serving() as (_server, address, _commands):
            raw = await RawClient.connect(address)
            greeting = await raw.read()
            assert {"QMP": {"version": VERSION.to_json(), "capabilities": []}} == greeting

            for request in (
                {"execute": "query-version", "id": 1},
                {"execute": "no-such-command", "id": 1},
            ):
                assert {
                    "error": {"class": "CommandNotFound", "desc": NEGOTIATE_FIRST},
                    "id": 1,
                } == await raw.request(request)
            assert {"return": "early bird"} == await raw.request({"execute": "early"})
            assert {"return": {}, "id": "n"} == await raw.request(
                {"execute": "qmp_capabilities", "arguments": {}, "id": "n"}
            )
            assert {"return": {"value": 3}} == await raw.request(
                {"execute": "echo", "arguments": {"value": 3}}
            )
            await raw.close()

    run(main)


@pytest.mark.parametrize(
    ("arguments", "desc"),
    [
        ({"enable": ["oob"]}, "Capability oob not available"),
        ({"enable": ["bogus"]}, "Parameter 'null' does not accept value 'bogus'"),
        ({"enable": "oob"}, "Invalid parameter type for 'enable', expected: array"),
        ({"enable": [1]}, "Invalid parameter type for 'enable[0]', expected: string"),
        ({"x": 1}, "Parameter 'x' is unexpected"),
    ],
)
def test_qmp_capabilities_validates_enable(run, arguments, desc):
    async def main():
        async with serving() as (_server, address, _commands):
            raw = await RawClient.connect(address)
            await raw.read()
            assert {"error": {"class": "GenericError", "desc": desc}} == await raw.request(
                {"execute": "qmp_capabilities", "arguments": arguments}
            )
            # Still negotiating.
            assert NEGOTIATE_FIRST == (await raw.request({"execute": "echo"}))["error"]["desc"]
            assert {"return": {}} == await raw.request(
                {"execute": "qmp_capabilities", "arguments": {"enable": []}}
            )
            await raw.close()

    run(main)


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("raw_input", "expected"),
    [
        (
            b'{ "execute": }',
            {"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}},
        ),
        (
            b"[1, 2]",
            {"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}},
        ),
        (b"42 ", {"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}),
        (
            b'{"id": 5}',
            {
                "error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"},
                "id": 5,
            },
        ),
        (
            b'{"execute": 1, "id": [1]}',
            {
                "error": {
                    "class": "GenericError",
                    "desc": "QMP input member 'execute' must be a string",
                },
                "id": [1],
            },
        ),
        (
            b'{"execute": "echo", "arguments": []}',
            {
                "error": {
                    "class": "GenericError",
                    "desc": "QMP input member 'arguments' must be an object",
                }
            },
        ),
        (
            b'{"execute": "echo", "foo": 1}',
            {"error": {"class": "GenericError", "desc": "QMP input member 'foo' is unexpected"}},
        ),
        (
            b'{"exec-oob": "echo", "id": {"k": null}}',
            {
                "error": {
                    "class": "GenericError",
                    "desc": "QMP input member 'exec-oob' is unexpected",
                },
                "id": {"k": None},
            },
        ),
        (b"{'execute': 'echo'}", {"return": {"value": None}}),
    ],
)
def test_malformed_requests_get_qemu_errors_and_the_connection_survives(run, raw_input, expected):
    async def main():
        async with serving() as (_server, address, _commands):
            raw = await RawClient.connect(address)
            await raw.greet_and_negotiate()

            assert expected == await raw.request(raw_input)
            assert {"return": {"value": "still here"}} == await raw.request(
                {"execute": "echo", "arguments": {"value": "still here"}}
            )
            await raw.close()

    run(main)


def test_concatenated_requests_without_newlines(run):
    async def main():
        async with serving() as (_server, address, _commands):
            raw = await RawClient.connect(address)
            await raw.read()
            raw.send(
                b'{"execute":"qmp_capabilities","id":1}{"execute":"echo","arguments":'
                b'{"value":"a"},"id":2}{"execute":"query-version","id":3}'
            )

            assert [1, 2, 3] == [(await raw.read())["id"] for _ in range(3)]
            await raw.close()

    run(main)


def test_output_is_ascii_json_lines_ending_in_crlf(run):
    async def main():
        async with serving() as (_server, address, _commands):
            raw = await RawClient.connect(address)
            await raw.greet_and_negotiate()
            raw.send({"execute": "echo", "arguments": {"value": "é☃"}})
            line = await raw.read_line()

            assert line.endswith(b"\r\n")
            assert line.count(b"\n") == 1
            assert line.isascii()
            assert {"return": {"value": "é☃"}} == json.loads(line)
            await raw.close()

    run(main)


def test_oversized_input_is_answered_then_the_connection_closes(run):
    async def main():
        async with serving(max_message_bytes=4096) as (server, address, _commands):
            raw = await RawClient.connect(address)
            await raw.greet_and_negotiate()
            with structlog.testing.capture_logs() as logs:
                raw.send(b'{"execute": "echo", "arguments": {"value": "' + b"x" * 10_000)

                assert {
                    "error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}
                } == await raw.read()
                assert await raw.at_eof()
            assert "qmp_client_input_refused" in [e["event"] for e in logs]
            await raw.close()
            await wait_for_no_clients(server)

    run(main)


def test_a_client_that_never_reads_events_is_disconnected(run):
    async def main():
        async with serving(max_output_bytes=64 << 10) as (server, address, _commands):
            raw = await RawClient.connect(address)
            await raw.greet_and_negotiate()
            with structlog.testing.capture_logs() as logs:
                for _ in range(400):
                    server.emit_event("BIG", {"blob": "x" * (64 << 10)})
                    await asyncio.sleep(0)
                    if not server.client_count:
                        break
            assert 0 == server.client_count
            assert "qmp_client_too_slow" in [e["event"] for e in logs]
            raw.writer.transport.abort()

    run(main)


def test_handler_that_does_not_finish_its_arguments_is_logged(run):
    async def main():
        async with serving() as (_server, address, _commands):
            raw = await RawClient.connect(address)
            await raw.greet_and_negotiate()
            with structlog.testing.capture_logs() as logs:
                assert {"return": {}} == await raw.request(
                    {"execute": "lazy", "arguments": {"unread": 1}}
                )
            assert [("qmp_arguments_not_checked", "lazy")] == [
                (e["event"], e["command"]) for e in logs if e["log_level"] == "warning"
            ]
            await raw.close()

    run(main)


# --------------------------------------------------------------------------- lifecycle


def test_close_cancels_running_commands_and_disconnects_clients(run):
    async def main():
        async with serving() as (server, address, commands):
            raw = await RawClient.connect(address)
            await raw.greet_and_negotiate()
            raw.send({"execute": "slow"})
            await commands.slow_started.wait()
            await server.close()
            await server.close()

            assert commands.slow_cancelled
            assert await raw.at_eof()
            assert 0 == server.client_count
            with pytest.raises(RuntimeError, match="closed"):
                await server.start("tcp:127.0.0.1:0")
            await raw.close()

    run(main)


def test_registry_may_not_redefine_builtins():
    registry = CommandRegistry()

    async def handler(args: Args) -> object:
        return None

    registry.register("query-version", handler)
    with pytest.raises(ValueError, match="provides query-version itself"):
        QMPServer(commands=registry, version_info=VERSION)


def test_emit_event_with_non_json_data_raises(run):
    async def main():
        async with serving() as (server, _address, _commands):
            with pytest.raises(TypeError):
                server.emit_event("BAD", {"x": object()})

    run(main)


def test_a_handler_may_not_close_the_server(run):
    async def main():
        registry = CommandRegistry()
        server = QMPServer(commands=registry, version_info=VERSION)

        async def quit_now(args: Args) -> object:
            await server.close()
            return None

        registry.register("quit", quit_now)
        address = await server.start("tcp:127.0.0.1:0")
        raw = await RawClient.connect(address)
        await raw.greet_and_negotiate()
        with structlog.testing.capture_logs():
            reply = await raw.request({"execute": "quit"})

        assert {
            "error": {
                "class": "GenericError",
                "desc": "QMPServer.close() called from a command handler",
            }
        } == reply
        await raw.close()
        await server.close()

    run(main)
