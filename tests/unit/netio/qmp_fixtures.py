"""Shared pieces for the QMP tests: a command registry, a server context, a raw client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from netio import SocketAddress, TcpAddress
from netio.qmp import Args, CommandRegistry, ErrorClass, QMPError, QMPServer, VersionInfo

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

VERSION = VersionInfo(major=10, minor=2, micro=0, package="livemig-test")


class Commands:
    """Test commands; ``slow`` blocks until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.slow_cancelled = False
        self.registry = CommandRegistry()
        self.registry.register("echo", self.echo)
        self.registry.register("slow", self.slow)
        self.registry.register("fail", self.fail)
        self.registry.register("crash", self.crash)
        self.registry.register("bad-return", self.bad_return)
        self.registry.register("lazy", self.lazy)
        self.registry.register("early", self.early, allow_before_negotiation=True)

    async def echo(self, args: Args) -> object:
        value = args.value("value", None)
        args.finish()
        return {"value": value}

    async def slow(self, args: Args) -> object:
        args.finish()
        self.slow_started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.slow_cancelled = True
            raise
        return "slow done"

    async def fail(self, args: Args) -> object:
        args.finish()
        raise QMPError(ErrorClass.DEVICE_NOT_ACTIVE, "No migration is in progress")

    async def crash(self, args: Args) -> object:
        args.finish()
        raise RuntimeError("boom")

    async def bad_return(self, args: Args) -> object:
        args.finish()
        return {"not json": object()}

    async def lazy(self, args: Args) -> object:
        return None  # never calls args.finish()

    async def early(self, args: Args) -> object:
        args.finish()
        return "early bird"


@contextlib.asynccontextmanager
async def serving(
    address: str = "tcp:127.0.0.1:0", **options: object
) -> AsyncIterator[tuple[QMPServer, SocketAddress, Commands]]:
    commands = Commands()
    server = QMPServer(commands=commands.registry, version_info=VERSION, **options)  # type: ignore[arg-type]
    bound = await server.start(address)
    try:
        yield server, bound, commands
    finally:
        commands.release.set()
        await server.close()


class RawClient:
    """A bare stream client: send bytes, read CRLF-terminated JSON lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, address: SocketAddress) -> RawClient:
        if isinstance(address, TcpAddress):
            reader, writer = await asyncio.open_connection(address.host, address.port)
        else:
            reader, writer = await asyncio.open_unix_connection(address.path)
        return cls(reader, writer)

    async def read_line(self, timeout_s: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout_s):
            return await self.reader.readline()

    async def read(self, timeout_s: float = 5.0) -> dict[str, object]:
        line = await self.read_line(timeout_s)
        assert line.endswith(b"\r\n"), line
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def send(self, data: bytes | dict[str, object]) -> None:
        self.writer.write(data if isinstance(data, bytes) else json.dumps(data).encode())

    async def request(self, data: bytes | dict[str, object]) -> dict[str, object]:
        self.send(data)
        return await self.read()

    async def greet_and_negotiate(self) -> dict[str, object]:
        greeting = await self.read()
        assert {"return": {}} == await self.request({"execute": "qmp_capabilities"})
        return greeting

    async def at_eof(self, timeout_s: float = 5.0) -> bool:
        async with asyncio.timeout(timeout_s):
            rest = await self.reader.read()
        return rest == b"" or self.reader.at_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
