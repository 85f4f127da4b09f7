"""Drive a sans-IO connection over a file, for ``file:PATH[,offset=N]`` migrations.

The API matches `netio.channel.Channel` (``next_event``, ``flush``, ``close`` and the byte
counters), so the migration code does not care whether the stream goes to a socket or a file.
Writes gather the connection's buffers with ``os.writev`` and reads scatter into its buffers with
``os.readv`` (at most `IOV_MAX` buffers and `CHUNK_BYTES` per call). File I/O does not wait for
readiness, so the channel yields to the event loop after every `CHUNK_BYTES` to let a vCPU task
run, and polls the connection's timer between chunks.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, NoReturn, TypeVar

from netio.channel import IOV_MAX, SansIOConnection
from netio.errors import ChannelClosedError, ChannelError

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable, Sequence

    from netio.uri import FileAddress

__all__ = ["CHUNK_BYTES", "FileChannel"]

#: Bytes moved per readv/writev call, and between two yields to the event loop.
CHUNK_BYTES = 4 << 20
_FILE_MODE = 0o600
_B = TypeVar("_B", bound=bytes | memoryview)


class FileChannel:
    """A sans-IO connection driven over a file.

    Create one with `for_writing` (outgoing migration) or `for_reading` (incoming).

    Attributes:
        bytes_sent: Bytes written so far.
        bytes_received: Bytes read so far.
        last_error: The last `OSError` seen (a read error is fed to the connection as end of
            stream).
        send_guard: Held while a chunk is written and hashed (as `Channel.send_guard`).
    """

    def __init__(
        self,
        fd: int,
        conn: SansIOConnection,
        *,
        address: FileAddress,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Wrap an open file descriptor positioned at the start of the stream.

        Args:
            fd: The file descriptor (owned by the channel from now on).
            conn: The sans-IO connection to drive.
            address: The file address, for messages.
            clock: The connection's clock; ``loop.time`` of the running loop by default.
        """
        self._fd = fd
        self._conn = conn
        self._address = address
        self._clock = clock if clock is not None else asyncio.get_running_loop().time
        self._closed = False
        self._eof = False
        self._write_lock = asyncio.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.last_error: OSError | None = None
        self.send_guard: contextlib.AbstractContextManager[object] | None = None

    @classmethod
    def for_writing(
        cls,
        address: FileAddress,
        conn: SansIOConnection,
        *,
        clock: Callable[[], float] | None = None,
    ) -> FileChannel:
        """Open (create) the file for an outgoing stream starting at ``address.offset_bytes``.

        Bytes before the offset are kept; anything after it is truncated away.

        Raises:
            ChannelError: The file cannot be opened.
        """
        try:
            fd = os.open(address.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        except OSError as exc:
            raise ChannelError(f"cannot open {address} for writing: {exc.strerror or exc}") from exc
        try:
            os.ftruncate(fd, address.offset_bytes)
            os.lseek(fd, address.offset_bytes, os.SEEK_SET)
        except OSError as exc:
            os.close(fd)
            raise ChannelError(f"cannot prepare {address}: {exc.strerror or exc}") from exc
        return cls(fd, conn, address=address, clock=clock)

    @classmethod
    def for_reading(
        cls,
        address: FileAddress,
        conn: SansIOConnection,
        *,
        clock: Callable[[], float] | None = None,
    ) -> FileChannel:
        """Open the file for an incoming stream starting at ``address.offset_bytes``.

        Raises:
            ChannelError: The file cannot be opened.
        """
        try:
            fd = os.open(address.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ChannelError(f"cannot open {address} for reading: {exc.strerror or exc}") from exc
        os.lseek(fd, address.offset_bytes, os.SEEK_SET)
        return cls(fd, conn, address=address, clock=clock)

    @property
    def conn(self) -> SansIOConnection:
        """The sans-IO connection this channel drives."""
        return self._conn

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def at_eof(self) -> bool:
        """Whether the end of the file was fed to the connection."""
        return self._eof

    async def next_event(self) -> object:
        """Return the connection's next event, reading the file as needed.

        Returns:
            The next event.

        Raises:
            ChannelClosedError: The channel is closed, or the file ended and the connection has
                neither an event nor a timer left.
        """
        conn = self._conn
        while True:
            self._check_open()
            event = conn.next_event()
            if event is not None:
                return event
            buffers = () if self._eof else conn.get_buffers()
            if buffers:
                self._read_chunk(buffers)
                await asyncio.sleep(0)
            else:
                await self._wait_for_timer()
            self._poll_timer()

    def _read_chunk(self, buffers: Sequence[memoryview]) -> None:
        try:
            nbytes = os.readv(self._fd, _bounded(buffers, CHUNK_BYTES))
        except OSError as exc:
            self.last_error = exc
            nbytes = 0
        if nbytes == 0:
            self._eof = True
            self._conn.receive_eof(self._clock())
            return
        self.bytes_received += nbytes
        self._conn.buffers_filled(nbytes, self._clock())

    async def _wait_for_timer(self) -> None:
        deadline = self._conn.get_timer()
        if deadline is None:
            what = "file ended" if self._eof else "connection takes no bytes"
            raise ChannelClosedError(
                f"reading {self._address}: the {what} and the connection reported no event"
            ) from self.last_error
        await asyncio.sleep(max(deadline - self._clock(), 0.0))

    def _poll_timer(self) -> None:
        deadline = self._conn.get_timer()
        if deadline is not None:
            now = self._clock()
            if now >= deadline:
                self._conn.handle_timer(now)

    async def flush(self, *, keep_bytes: int = 0) -> None:
        """Write what the connection has queued, yielding between chunks.

        Args:
            keep_bytes: Return once at most this many bytes are still queued (as `Channel`).

        Raises:
            ChannelClosedError: The channel is closed or writing failed (``ENOSPC``, ``EIO``);
                the `OSError` is kept in `last_error`.
        """
        async with self._write_lock:
            while True:
                self._check_open()
                buffers = self._conn.data_to_send()
                if not buffers or (keep_bytes and self._conn.pending_send_bytes <= keep_bytes):
                    return
                self._write_chunk(buffers)
                self._poll_timer()
                await asyncio.sleep(0)

    def flush_nowait(self, max_bytes: int = CHUNK_BYTES) -> int:
        """Write about ``max_bytes`` of the queued output at once, without yielding.

        Returns:
            The number of bytes written.

        Raises:
            ChannelClosedError: The channel is closed or writing failed.
        """
        before = self.bytes_sent
        while self.bytes_sent - before < max_bytes:
            self._check_open()
            buffers = self._conn.data_to_send()
            if not buffers:
                break
            self._write_chunk(buffers, max_bytes - (self.bytes_sent - before))
        return self.bytes_sent - before

    def _write_chunk(
        self, buffers: Sequence[bytes | memoryview], limit_bytes: int = CHUNK_BYTES
    ) -> None:
        if self.send_guard is None:
            self._write_unguarded(buffers, limit_bytes)
            return
        with self.send_guard:
            self._write_unguarded(buffers, limit_bytes)

    def _write_unguarded(self, buffers: Sequence[bytes | memoryview], limit_bytes: int) -> None:
        try:
            nbytes = os.writev(self._fd, _bounded(buffers, min(limit_bytes, CHUNK_BYTES)))
        except OSError as exc:
            self._fail_write(exc)
        self.bytes_sent += nbytes
        self._conn.data_sent(nbytes, self._clock())

    def _fail_write(self, exc: OSError) -> NoReturn:
        self.last_error = exc
        raise ChannelClosedError(f"writing {self._address} failed: {exc.strerror or exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosedError(f"the channel to {self._address} is closed")

    def close(self) -> None:
        """Close the file; idempotent."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def abort(self) -> None:
        """Close the file (there is no peer to reset); idempotent, like `Channel.abort`."""
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<FileChannel {self._address} {state} sent={self.bytes_sent} "
            f"received={self.bytes_received}>"
        )


def _bounded(buffers: Sequence[_B], limit_bytes: int) -> list[memoryview | _B]:
    """Take at most `IOV_MAX` buffers holding at most ``limit_bytes`` (the last one cut short)."""
    taken: list[memoryview | _B] = []
    total_bytes = 0
    for buffer in buffers[:IOV_MAX]:
        size = buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)
        if total_bytes + size > limit_bytes:
            taken.append(memoryview(buffer).cast("B")[: limit_bytes - total_bytes])
            break
        taken.append(buffer)
        total_bytes += size
    return taken
