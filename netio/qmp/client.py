"""A small asyncio QMP client, for the livemig command line and for tests.

It speaks to our `QMPServer` and to QEMU alike: it reads the greeting, negotiates capabilities,
matches replies to requests by ``id`` (so requests may be pipelined from several tasks) and keeps
events in arrival order until they are consumed with `QMPClient.events` or
`QMPClient.wait_event`. Input is split with the same streaming JSON parser as the server, so a
server that pretty-prints over several lines works too.

Usage::

    async with await QMPClient.connect("unix:/run/src.qmp", timeout_s=5) as qmp:
        await qmp.execute("migrate", {"uri": "tcp:127.0.0.1:4444"})
        event = await qmp.wait_event(
            "MIGRATION", timeout_s=60, predicate=lambda e: e.data["status"] == "completed"
        )
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Self

import structlog

from netio.errors import ConnectError, NetIOError
from netio.qmp.jsonstream import JSONInputError, JSONStreamParser
from netio.sockopts import open_connection
from netio.uri import SocketAddress, parse_qmp_address

if TYPE_CHECKING:
    import ssl as ssl_module
    from collections.abc import AsyncIterator, Callable, Mapping
    from types import TracebackType

__all__ = [
    "QMPClient",
    "QMPClientError",
    "QMPCommandError",
    "QMPConnectionError",
    "QMPEvent",
    "QMPTimeoutError",
]

#: Events kept unconsumed before the oldest are dropped.
MAX_BUFFERED_EVENTS: Final = 10_000
_READ_CHUNK_BYTES: Final = 64 << 10
_MAX_MESSAGE_BYTES: Final = 64 << 20
_log = structlog.get_logger("netio.qmp.client")


class QMPClientError(NetIOError):
    """Root of the errors our QMP client raises."""


class QMPConnectionError(QMPClientError):
    """Connecting, the greeting or negotiation failed, or the connection was lost."""


class QMPTimeoutError(QMPClientError, TimeoutError):
    """A command or an awaited event did not arrive in time."""


class QMPCommandError(QMPClientError):
    """The server answered a command with an error.

    Attributes:
        command: The command name.
        error_class: The QMP error class, e.g. ``GenericError``.
        desc: The server's description.
    """

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {desc} ({error_class})")
        self.command = command
        self.error_class = error_class
        self.desc = desc


@dataclass(frozen=True, kw_only=True, slots=True)
class QMPEvent:
    """An asynchronous event from the server.

    Attributes:
        name: The event name, e.g. ``MIGRATION``.
        data: The event's data (empty when the event has none).
        timestamp_s: The server's wall-clock time of the event, in seconds since the epoch.
    """

    name: str
    data: Mapping[str, object] = field(default_factory=dict)
    timestamp_s: float = 0.0

    @classmethod
    def from_message(cls, message: Mapping[str, object]) -> QMPEvent:
        """Build an event from its wire message."""
        data = message.get("data")
        stamp = message.get("timestamp")
        timestamp_s = 0.0
        if isinstance(stamp, dict):
            seconds, micros = stamp.get("seconds", 0), stamp.get("microseconds", 0)
            if isinstance(seconds, int) and isinstance(micros, int):
                timestamp_s = seconds + micros / 1e6
        return cls(
            name=str(message["event"]),
            data=data if isinstance(data, dict) else {},
            timestamp_s=timestamp_s,
        )


class QMPClient:
    """A connected, negotiated QMP session. Create one with `connect`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, address: str
    ) -> None:
        """Wrap connected streams; prefer `connect`, which also greets and negotiates."""
        self._reader = reader
        self._writer = writer
        self._address = address
        self._parser = JSONStreamParser(max_message_bytes=_MAX_MESSAGE_BYTES)
        self._greeting: asyncio.Future[dict[str, object]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, object]]]] = {}
        self._next_id = 0
        self._events: collections.deque[QMPEvent] = collections.deque()
        self._events_changed = asyncio.Condition()
        self._closed = False
        self._lost: QMPConnectionError | None = None
        self._reader_task = asyncio.ensure_future(self._read_messages())

    @classmethod
    async def connect(
        cls,
        address: SocketAddress | str,
        timeout_s: float = 5.0,
        *,
        negotiate: bool = True,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Self:
        """Connect, read the greeting and (by default) negotiate capabilities.

        Args:
            address: A `TcpAddress`/`UnixAddress` or text (``tcp:HOST:PORT``, ``unix:PATH``).
            timeout_s: Limit for connecting, the greeting and negotiation together.
            negotiate: Send ``qmp_capabilities`` (False leaves the session in negotiation mode).
            ssl: Speak TLS with this (client) context.
            server_hostname: The name the server's certificate must have (by default the
                address's host).

        Returns:
            The connected client.

        Raises:
            UriError: The address text is malformed.
            QMPConnectionError: Connecting, the greeting or negotiation failed.
        """
        if isinstance(address, str):
            address = parse_qmp_address(address)
        try:
            async with asyncio.timeout(timeout_s):
                sock = await open_connection(address, timeout_s)
                hostname = server_hostname or getattr(address, "host", None)
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=ssl, server_hostname=hostname if ssl is not None else None
                )
        except (ConnectError, TimeoutError, OSError) as exc:
            raise QMPConnectionError(f"cannot connect to QMP at {address}: {exc}") from exc
        client = cls(reader, writer, address=str(address))
        try:
            async with asyncio.timeout(timeout_s):
                await client.greeting()
                if negotiate:
                    await client.execute("qmp_capabilities")
        except BaseException as exc:
            await client.close()
            if isinstance(exc, TimeoutError | QMPCommandError):
                raise QMPConnectionError(
                    f"QMP at {address} did not complete the handshake: {exc}"
                ) from exc
            raise
        return client

    async def greeting(self) -> dict[str, object]:
        """Return the server's greeting (``{"QMP": {"version", "capabilities"}}``).

        Raises:
            QMPConnectionError: The first message was not a greeting, or the connection was lost.
        """
        return await asyncio.shield(self._greeting)

    async def execute(
        self,
        name: str,
        arguments: Mapping[str, object] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> object:
        """Run a command and return its ``return`` value.

        Args:
            name: The command name.
            arguments: The command's arguments, if any.
            timeout_s: Give up waiting after this long (None waits for ever).

        Returns:
            The ``return`` value.

        Raises:
            QMPCommandError: The server answered with an error.
            QMPTimeoutError: No answer within ``timeout_s``.
            QMPConnectionError: The connection is closed or was lost.
        """
        self._check_usable()
        request_id = self._next_id
        self._next_id += 1
        request: dict[str, object] = {"execute": name, "id": request_id}
        if arguments is not None:
            request["arguments"] = dict(arguments)
        reply: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (name, reply)
        try:
            self._writer.write(json.dumps(request).encode() + b"\n")
            async with asyncio.timeout(timeout_s):
                response = await reply
        except TimeoutError:
            raise QMPTimeoutError(f"{name}: no reply within {timeout_s:g} s") from None
        finally:
            self._pending.pop(request_id, None)
        return _unwrap(name, response)

    async def events(self) -> AsyncIterator[QMPEvent]:
        """Yield events in arrival order, consuming them; ends when the connection closes."""
        while True:
            async with self._events_changed:
                await self._events_changed.wait_for(lambda: bool(self._events) or self._closed)
                if not self._events:
                    return
                event = self._events.popleft()
            yield event

    async def wait_event(
        self,
        name: str,
        timeout_s: float,
        predicate: Callable[[QMPEvent], bool] | None = None,
    ) -> QMPEvent:
        """Wait for (and consume) the first event called ``name`` that matches ``predicate``.

        Events already received count; others are left for later consumers.

        Args:
            name: The event name.
            timeout_s: How long to wait.
            predicate: An extra condition on the event.

        Returns:
            The event.

        Raises:
            QMPTimeoutError: No such event within ``timeout_s``.
            QMPConnectionError: The connection closed first.
        """
        found: list[QMPEvent] = []

        def take() -> bool:
            for event in self._events:
                if event.name == name and (predicate is None or predicate(event)):
                    self._events.remove(event)
                    found.append(event)
                    return True
            return self._closed

        try:
            async with asyncio.timeout(timeout_s), self._events_changed:
                await self._events_changed.wait_for(take)
        except TimeoutError:
            raise QMPTimeoutError(f"no {name} event within {timeout_s:g} s") from None
        if not found:
            raise self._lost or QMPConnectionError(f"QMP connection to {self._address} closed")
        return found[0]

    async def close(self) -> None:
        """Close the connection; idempotent. Pending commands fail with `QMPConnectionError`."""
        self._writer.close()
        await self._mark_closed(QMPConnectionError("the QMP client was closed"))
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        if self._closed:
            raise self._lost or QMPConnectionError(f"QMP connection to {self._address} closed")

    async def _read_messages(self) -> None:
        reason = QMPConnectionError(f"QMP connection to {self._address} closed by the server")
        try:
            while True:
                data = await self._reader.read(_READ_CHUNK_BYTES)
                if not data:
                    break
                for item in self._parser.feed(data):
                    if isinstance(item, JSONInputError):
                        reason = QMPConnectionError(
                            f"bad QMP output from {self._address}: {item.desc}"
                        )
                        return
                    await self._route(item.value)
        except OSError as exc:
            reason = QMPConnectionError(f"QMP connection to {self._address} lost: {exc}")
        finally:
            await self._mark_closed(reason)

    async def _route(self, message: object) -> None:
        if not isinstance(message, dict):
            _log.warning("qmp_message_ignored", reason="not an object")
            return
        if not self._greeting.done():
            if "QMP" in message and isinstance(message["QMP"], dict):
                self._greeting.set_result(message)
            else:
                self._greeting.set_exception(
                    QMPConnectionError(f"{self._address} did not greet with a QMP greeting")
                )
            return
        if "event" in message:
            await self._add_event(QMPEvent.from_message(message))
            return
        request_id = message.get("id")
        pending = self._pending.get(request_id) if isinstance(request_id, int) else None
        if pending is None:
            _log.warning("qmp_reply_unmatched", reply=message)
        elif not pending[1].done():
            pending[1].set_result(message)

    async def _add_event(self, event: QMPEvent) -> None:
        async with self._events_changed:
            if len(self._events) >= MAX_BUFFERED_EVENTS:
                dropped = self._events.popleft()
                _log.warning("qmp_event_dropped", event=dropped.name)
            self._events.append(event)
            self._events_changed.notify_all()

    async def _mark_closed(self, reason: QMPConnectionError) -> None:
        if self._closed:
            return
        self._closed = True
        self._lost = reason
        if not self._greeting.done():
            self._greeting.set_exception(reason)
            self._greeting.exception()  # retrieved: connect() reports it if it waits
        for _name, reply in self._pending.values():
            if not reply.done():
                reply.set_exception(reason)
        async with self._events_changed:
            self._events_changed.notify_all()


def _unwrap(name: str, response: Mapping[str, object]) -> object:
    if "return" in response:
        return response["return"]
    error = response.get("error")
    if isinstance(error, dict):
        raise QMPCommandError(name, str(error.get("class")), str(error.get("desc")))
    raise QMPConnectionError(f"{name}: malformed QMP reply {response!r}")
