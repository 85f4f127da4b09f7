"""A minimal HTTP/1.1 client for the metrics endpoints and Prometheus' API (no extra package)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from typing import Any


async def http_request(
    address: str, path: str = "/metrics", method: str = "GET"
) -> tuple[int, bytes]:
    """One request to ``[tcp:]HOST:PORT``; the status code and the body."""
    host, port = address.removeprefix("tcp:").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def http_get(address: str, path: str = "/metrics") -> bytes:
    """GET `path`; the body of what must be a 200 reply."""
    code, body = await http_request(address, path)
    assert 200 == code, (address, path, code)
    return body


async def promql(
    address: str, query: str, *, timeout_s: float = 30.0, poll_s: float = 0.5
) -> list[dict[str, Any]]:
    """The first non-empty result of an instant query to a Prometheus, polled until it scraped."""
    path = "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    async with asyncio.timeout(timeout_s):
        while True:
            # not listening yet, not ready (503), or no result yet
            with contextlib.suppress(OSError, AssertionError, ValueError, IndexError):
                result = json.loads(await http_get(address, path))["data"]["result"]
                if result:
                    return list(result)
            await asyncio.sleep(poll_s)
