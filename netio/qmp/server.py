"""A QMP server that QEMU's own tools (``qemu.qmp.QMPClient``, ``qmp-shell``) can drive.

Wire behaviour, as in QEMU (docs/interop/qmp-spec.rst, monitor/qmp.c, qapi/qmp-dispatch.c):

- On connect the server sends ``{"QMP": {"version": ..., "capabilities": []}}`` (no ``oob``:
  out-of-band execution is not implemented, so it is not offered).
- Until ``qmp_capabilities`` succeeds only it (and commands registered with
  ``allow_before_negotiation``) runs; anything else gets ``CommandNotFound`` "Expecting
  capabilities negotiation with 'qmp_capabilities'". Events are sent to negotiated clients only.
- Input is a stream of JSON objects with or without newlines between them. A request is
  ``{"execute": NAME, "arguments"?: {...}, "id"?: ANY}``; the reply is ``{"return": VALUE}`` or
  ``{"error": {"class", "desc"}}``, with the request's ``id`` echoed when it had one. Malformed
  input gets QEMU's ``GenericError`` wording and the connection carries on, except beyond the
  size or nesting limit, where the server answers and closes.
- Output is ASCII JSON, one message per line, terminated by CRLF.
- Each client's requests run one at a time, in order, so replies come back in request order
  (QEMU's behaviour without OOB); each command runs in its own task, so a slow command only
  delays its own client's replies, never events or other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from netio.qmp.commands import Args, CommandRegistry, ErrorClass, QMPError, RegisteredCommand
from netio.qmp.jsonstream import DEFAULT_MAX_MESSAGE_BYTES, JSONInputError, JSONStreamParser
from netio.sockopts import bound_address, listen
from netio.uri import SocketAddress, UnixAddress, parse_qmp_address

if TYPE_CHECKING:
    import ssl as ssl_module
    from collections.abc import Callable, Mapping

    from netio.qmp.jsonstream import ParsedMessage

__all__ = ["QMPServer", "VersionInfo", "encode_message", "event_timestamp"]

#: Requests read ahead of the one running, per client, before the server stops reading.
MAX_QUEUED_REQUESTS: Final = 8
#: Output a client may leave unread before it is disconnected.
DEFAULT_MAX_OUTPUT_BYTES: Final = 16 << 20
_READ_CHUNK_BYTES: Final = 64 << 10
_NEGOTIATION_FIRST: Final = "Expecting capabilities negotiation with 'qmp_capabilities'"
_QMP_CAPABILITIES: Final = "qmp_capabilities"
_OFFERED_CAPABILITIES: Final[tuple[str, ...]] = ()
_KNOWN_CAPABILITIES: Final = frozenset({"oob"})
_END_OF_INPUT: Final = object()
_log = structlog.get_logger("netio.qmp")


@dataclass(frozen=True, kw_only=True, slots=True)
class VersionInfo:
    """The version in the greeting and in ``query-version``."""

    major: int
    minor: int
    micro: int
    package: str = ""

    def to_json(self) -> dict[str, object]:
        """Return QEMU's ``VersionInfo`` object."""
        triple = {"major": self.major, "minor": self.minor, "micro": self.micro}
        return {"qemu": triple, "package": self.package}


def encode_message(message: Mapping[str, object]) -> bytes:
    """Encode one QMP message: ASCII JSON and CRLF.

    Raises:
        TypeError: A value is not JSON-serialisable.
        ValueError: A number is NaN or infinite.
    """
    return json.dumps(message, ensure_ascii=True, allow_nan=False).encode("ascii") + b"\r\n"


def event_timestamp() -> dict[str, int]:
    """Return the wall-clock time as QMP's ``{"seconds", "microseconds"}``."""
    seconds, microseconds = divmod(time.time_ns() // 1000, 1_000_000)
    return {"seconds": seconds, "microseconds": microseconds}


def _error(error_class: str, desc: str) -> dict[str, object]:
    return {"error": {"class": error_class, "desc": desc}}


def _check_request(request: dict[str, object]) -> tuple[str, dict[str, object]]:
    """Validate a request object like QEMU's ``qmp_dispatch_check_obj``."""
    name: str | None = None
    for key, value in request.items():
        if key == "execute":
            if not isinstance(value, str):
                raise QMPError.generic("QMP input member 'execute' must be a string")
            name = value
        elif key == "arguments":
            if not isinstance(value, dict):
                raise QMPError.generic("QMP input member 'arguments' must be an object")
        elif key != "id":
            raise QMPError.generic(f"QMP input member '{key}' is unexpected")
    if name is None:
        raise QMPError.generic("QMP input lacks member 'execute'")
    arguments = request.get("arguments", {})
    assert isinstance(arguments, dict)  # noqa: S101 - checked above
    return name, arguments


class QMPServer:
    """Serve QMP on any number of TCP and unix listeners, to any number of clients."""

    def __init__(
        self,
        *,
        commands: CommandRegistry,
        version_info: VersionInfo,
        on_client_count_change: Callable[[int], None] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> None:
        """Create a server; `start` listens.

        Args:
            commands: The commands offered besides the built-ins (``qmp_capabilities``,
                ``query-commands``, ``query-version``).
            version_info: The version reported in the greeting and by ``query-version``.
            on_client_count_change: Called with the number of connected clients whenever it
                changes.
            max_message_bytes: Largest request accepted; beyond it the client is disconnected.
            max_output_bytes: Unread output (events) a client may accumulate before it is
                disconnected.

        Raises:
            ValueError: ``commands`` redefines a built-in command.
        """
        self._builtins = CommandRegistry()
        self._builtins.register(_QMP_CAPABILITIES, self._refuse, allow_before_negotiation=True)
        self._builtins.register("query-commands", self._query_commands)
        self._builtins.register("query-version", self._query_version)
        clashes = [name for name in self._builtins.names() if name in commands]
        if clashes:
            raise ValueError(f"the QMP server provides {', '.join(clashes)} itself")
        self._commands = commands
        self._version_info = version_info
        self._on_client_count_change = on_client_count_change
        self._max_message_bytes = max_message_bytes
        self._max_output_bytes = max_output_bytes
        self._servers: list[asyncio.Server] = []
        self._addresses: list[SocketAddress] = []
        self._sessions: set[_Session] = set()
        self._handler_tasks: set[asyncio.Task[object]] = set()
        self._closed = False

    @property
    def addresses(self) -> list[SocketAddress]:
        """The addresses listened on (with the real port when started on port 0)."""
        return list(self._addresses)

    @property
    def client_count(self) -> int:
        """Connected clients, negotiated or not."""
        return len(self._sessions)

    async def start(
        self, address: SocketAddress | str, *, ssl: ssl_module.SSLContext | None = None
    ) -> SocketAddress:
        """Listen on one more address.

        A unix socket is made readable and writable by its owner only (0600): whoever can
        reach QMP controls the VM.

        Args:
            address: A `TcpAddress`/`UnixAddress`, or text such as ``tcp:127.0.0.1:0`` or
                ``unix:/run/vm.qmp,server=on,wait=off``.
            ssl: Serve over TLS with this (server) context (`TlsCredsX509.context`).

        Returns:
            The bound address (the real port when asked for port 0).

        Raises:
            UriError: The address text is malformed.
            ListenError: The address cannot be listened on.
        """
        if self._closed:
            raise RuntimeError("the QMP server is closed")
        if isinstance(address, str):
            address = parse_qmp_address(address, listen=True)
        sock = listen(address, unix_mode=0o600)
        bound = bound_address(sock)
        try:
            server = await asyncio.start_server(self._serve_client, sock=sock, ssl=ssl)
        except BaseException:
            sock.close()
            raise
        self._servers.append(server)
        self._addresses.append(bound)
        _log.info("qmp_listening", address=str(bound), tls=ssl is not None)
        return bound

    def emit_event(self, name: str, data: Mapping[str, object] | None = None) -> None:
        """Send an event to every negotiated client, stamped with the wall-clock time.

        Args:
            name: The event name, e.g. ``MIGRATION``.
            data: The event's ``data`` object, or None for an event without data.

        Raises:
            TypeError: ``data`` is not JSON-serialisable.
        """
        message: dict[str, object] = {"event": name}
        if data is not None:
            message["data"] = dict(data)
        message["timestamp"] = event_timestamp()
        line = encode_message(message)
        for session in list(self._sessions):
            if session.negotiated:
                session.write(line)

    async def close(self) -> None:
        """Stop listening, disconnect every client and cancel running commands; idempotent.

        A command handler must not await this (it would cancel itself): have it request the
        shutdown (set the daemon's shutdown event) and return.

        Raises:
            RuntimeError: Called from a command handler.
        """
        if asyncio.current_task() in self._handler_tasks:
            raise RuntimeError("QMPServer.close() called from a command handler")
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        tasks: list[asyncio.Task[object]] = [*self._handler_tasks]
        for session in list(self._sessions):
            session.close()
            if session.task is not None:
                tasks.append(session.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        for address in self._addresses:
            if isinstance(address, UnixAddress):
                _unlink_socket(address.path)
        _log.info("qmp_closed")

    # ------------------------------------------------------------------ clients

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closed:
            writer.close()
            return
        session = _Session(self, reader, writer)
        self._sessions.add(session)
        self._client_count_changed()
        try:
            await session.run()
        except asyncio.CancelledError:
            # Only close() (or the loop shutting down) cancels a client. Ending normally keeps
            # Python 3.11's StreamReaderProtocol from reporting the cancellation as an error.
            pass
        except Exception:  # noqa: BLE001 - a broken client must not reach the loop's handler
            _log.exception("qmp_client_failed", peer=session.peer)
        finally:
            session.close()
            self._sessions.discard(session)
            self._client_count_changed()

    def _client_count_changed(self) -> None:
        if self._on_client_count_change is None:
            return
        try:
            self._on_client_count_change(len(self._sessions))
        except Exception:  # noqa: BLE001 - a callback bug must not break the server
            _log.exception("qmp_client_count_callback_failed")

    # ------------------------------------------------------------------ dispatch

    async def execute(self, session: _Session, request: object) -> dict[str, object]:
        """Run one request for a session and return the response object."""
        if not isinstance(request, dict):
            return _error(ErrorClass.GENERIC_ERROR, "QMP input must be a JSON object")
        try:
            name, arguments = _check_request(request)
            result = await self._dispatch(session, name, arguments)
            response: dict[str, object] = {"return": {} if result is None else result}
        except QMPError as exc:
            response = _error(exc.error_class, exc.desc)
        if "id" in request:
            response["id"] = request["id"]
        return response

    async def _dispatch(self, session: _Session, name: str, arguments: dict[str, object]) -> object:
        command = self._builtins.get(name) or self._commands.get(name)
        if not session.negotiated and (command is None or not command.allow_before_negotiation):
            raise QMPError(ErrorClass.COMMAND_NOT_FOUND, _NEGOTIATION_FIRST)
        if command is None:
            raise QMPError(ErrorClass.COMMAND_NOT_FOUND, f"The command {name} has not been found")
        args = Args(arguments)
        if name == _QMP_CAPABILITIES:
            return self._qmp_capabilities(session, args)
        return await self._run_handler(command, args)

    async def _run_handler(self, command: RegisteredCommand, args: Args) -> object:
        task: asyncio.Task[object] = asyncio.ensure_future(command.handler(args))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)
        try:
            result = await task
        except QMPError:
            raise
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            raise QMPError.generic(f"The command {command.name} was cancelled") from None
        except Exception as exc:
            _log.exception("qmp_command_failed", command=command.name)
            raise QMPError.generic(str(exc) or type(exc).__name__) from exc
        if not args.finished and next(args.unconsumed(), None) is not None:
            _log.warning("qmp_arguments_not_checked", command=command.name)
        return self._checked_result(command.name, result)

    @staticmethod
    def _checked_result(name: str, result: object) -> object:
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            _log.exception("qmp_result_not_json", command=name)
            raise QMPError.generic(
                f"internal error: {name} returned a value that is not JSON"
            ) from exc
        return result

    # ------------------------------------------------------------------ built-ins

    def _qmp_capabilities(self, session: _Session, args: Args) -> object:
        enable = args.enum_array("enable", _KNOWN_CAPABILITIES, [])
        args.finish()
        if session.negotiated:
            raise QMPError(
                ErrorClass.COMMAND_NOT_FOUND,
                "Capabilities negotiation is already complete, command ignored",
            )
        unavailable = [name for name in enable if name not in _OFFERED_CAPABILITIES]
        if unavailable:
            raise QMPError.generic(f"Capability {', '.join(unavailable)} not available")
        session.negotiated = True
        return {}

    @staticmethod
    async def _refuse(args: Args) -> object:  # pragma: no cover - dispatched inline
        raise QMPError.generic(f"qmp_capabilities is handled by the session ({args!r})")

    async def _query_commands(self, args: Args) -> object:
        args.finish()
        names = [*self._builtins.names(), *self._commands.names()]
        return [{"name": name} for name in names]

    async def _query_version(self, args: Args) -> object:
        args.finish()
        return self._version_info.to_json()

    # ------------------------------------------------------------------ for sessions

    @property
    def greeting(self) -> dict[str, object]:
        """The greeting sent to every new client."""
        version = self._version_info.to_json()
        return {"QMP": {"version": version, "capabilities": list(_OFFERED_CAPABILITIES)}}

    def new_parser(self) -> JSONStreamParser:
        """Return an input parser configured with the server's limits."""
        return JSONStreamParser(max_message_bytes=self._max_message_bytes)

    @property
    def max_output_bytes(self) -> int:
        """Unread output a client may accumulate."""
        return self._max_output_bytes


class _Session:
    """One client connection: greeting, negotiation state, request queue, output."""

    def __init__(
        self, server: QMPServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._parser = server.new_parser()
        self._queue: asyncio.Queue[object] = asyncio.Queue(MAX_QUEUED_REQUESTS)
        self.negotiated = False
        self.task = asyncio.current_task()
        self.peer = _peer_text(writer)

    async def run(self) -> None:
        _log.info("qmp_client_connected", peer=self.peer)
        self.write(encode_message(self._server.greeting))
        dispatcher = asyncio.ensure_future(self._dispatch_requests())
        try:
            await self._read_requests()
            if not dispatcher.done():
                await self._queue.put(_END_OF_INPUT)
                await dispatcher
        finally:
            if not dispatcher.done():
                dispatcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher
            _log.info("qmp_client_disconnected", peer=self.peer)

    async def _read_requests(self) -> None:
        while True:
            try:
                data = await self._reader.read(_READ_CHUNK_BYTES)
            except OSError:
                return
            if not data:
                return
            for item in self._parser.feed(data):
                await self._queue.put(item)
                if isinstance(item, JSONInputError) and item.fatal:
                    return

    async def _dispatch_requests(self) -> None:
        while (item := await self._queue.get()) is not _END_OF_INPUT:
            if isinstance(item, JSONInputError):
                await self._respond(_error(ErrorClass.GENERIC_ERROR, item.desc))
                if item.fatal:
                    _log.warning("qmp_client_input_refused", peer=self.peer, reason=item.desc)
                    self._writer.close()
                    return
                continue
            message: ParsedMessage = item  # type: ignore[assignment]  # the queue's other type
            await self._respond(await self._server.execute(self, message.value))

    async def _respond(self, response: Mapping[str, object]) -> None:
        if self._writer.is_closing():
            return
        self._writer.write(encode_message(response))
        try:
            await self._writer.drain()
        except OSError:
            self.close()

    def write(self, line: bytes) -> None:
        """Queue one encoded message; disconnect a client that leaves too much unread."""
        if self._writer.is_closing():
            return
        self._writer.write(line)
        if self._writer.transport.get_write_buffer_size() > self._server.max_output_bytes:
            _log.warning("qmp_client_too_slow", peer=self.peer)
            self._writer.transport.abort()

    def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()


def _peer_text(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:  # noqa: PLR2004 - (host, port, ...)
        return f"{peer[0]}:{peer[1]}"
    sockname = writer.get_extra_info("sockname")
    return f"unix:{sockname}" if sockname else "unix"


def _unlink_socket(path: str) -> None:
    socket_path = Path(path)
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(socket_path.stat().st_mode):
            socket_path.unlink()
