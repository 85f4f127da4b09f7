"""A small HTTP/JSON control API for the fault proxy, in the spirit of Toxiproxy's.

| method and path | does |
|---|---|
| GET /status | proxy address, upstream, counters, active faults |
| GET /faults | active faults |
| POST /faults | add a fault: a JSON object (see faultproxy.faults), returns it with its id |
| DELETE /faults | remove every fault and release every stall |
| DELETE /faults/ID | remove one fault |
| POST /release | let stalled connections move again |
| POST /reset | drop every proxied connection with a TCP reset |

Errors are `{"error": "..."}` with status 400 (a bad fault), 404 or 405. HTTP/1.1, one request
per connection, bodies at most 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Final

from faultproxy.faults import FaultError, parse_fault

if TYPE_CHECKING:
    from collections.abc import Callable

    from faultproxy.proxy import FaultProxy

MAX_BODY_BYTES: Final = 64 * 1024
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class ControlServer:
    """Serves the control API of one proxy."""

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._respond(reader)
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            status, body = 400, {"error": f"bad request: {exc}"}
        payload = json.dumps(body).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, object]:
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) != 3:  # noqa: PLR2004 - METHOD PATH VERSION
            raise ValueError("malformed request line")
        method, path, _version = request_line
        length = await _content_length(reader)
        raw = await reader.readexactly(length) if length else b""
        return self.route(method, path.rstrip("/") or "/", raw)

    def route(self, method: str, path: str, raw: bytes) -> tuple[int, object]:
        """Answer one request (pure: the tests call it without sockets)."""
        if path.startswith("/faults/") and method == "DELETE":
            return self._remove(path.removeprefix("/faults/"))
        handlers: dict[tuple[str, str], Callable[[], tuple[int, object]]] = {
            ("GET", "/status"): lambda: (200, self._status()),
            ("GET", "/faults"): lambda: (200, self._faults()),
            ("POST", "/faults"): lambda: self._add(raw),
            ("DELETE", "/faults"): self._clear,
            ("POST", "/release"): self._release,
            ("POST", "/reset"): self._reset,
        }
        handler = handlers.get((method, path))
        if handler is not None:
            return handler()
        if any(known == path for _, known in handlers):
            return 405, {"error": f"{method} not allowed on {path}"}
        return 404, {"error": f"no such endpoint {path}"}

    def _faults(self) -> list[dict[str, object]]:
        return [fault.to_json() for fault in self._proxy.faults.values()]

    def _add(self, raw: bytes) -> tuple[int, object]:
        try:
            spec = json.loads(raw or b"{}")
        except ValueError as exc:
            return 400, {"error": f"not JSON: {exc}"}
        if not isinstance(spec, dict):
            return 400, {"error": "a fault is a JSON object"}
        try:
            return 200, self._proxy.add(parse_fault(spec)).to_json()
        except FaultError as exc:
            return 400, {"error": str(exc)}

    def _remove(self, fault_id: str) -> tuple[int, object]:
        if fault_id.isdigit() and self._proxy.remove(int(fault_id)):
            return 200, {}
        return 404, {"error": f"no fault {fault_id}"}

    def _clear(self) -> tuple[int, object]:
        self._proxy.clear()
        return 200, {}

    def _release(self) -> tuple[int, object]:
        self._proxy.release()
        return 200, {}

    def _reset(self) -> tuple[int, object]:
        self._proxy.reset_connections()
        return 200, {}

    def _status(self) -> dict[str, object]:
        proxy = self._proxy
        return {
            "listen": str(proxy.address) if proxy.address else None,
            "upstream": str(proxy.upstream),
            "stats": proxy.stats.to_json(),
            "faults": self._faults(),
        }


async def _content_length(reader: asyncio.StreamReader) -> int:
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if not 0 <= length <= MAX_BODY_BYTES:
        raise ValueError(f"body of {length} bytes (at most {MAX_BODY_BYTES})")
    return length
