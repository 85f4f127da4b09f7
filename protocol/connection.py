"""What both connection roles share: the I/O contract, the event queue and the liveness timers.

Sending is a queue of buffers (``data_to_send``/``data_sent``); receiving is readinto-style
(``get_buffers``/``buffers_filled``) or by copy (``receive_data``); time only enters as ``now``.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from protocol.events import PeerTimedOut
from protocol.reader import FrameReader, FrameSink
from protocol.writer import FrameWriter

if TYPE_CHECKING:
    import enum
    from collections.abc import Sequence

    from protocol.errors import FrameInfo
    from protocol.events import Event
    from protocol.limits import Limits, Timeouts
    from protocol.states import StreamMode


class Connection(abc.ABC):
    """Base of ``SourceConnection`` and ``DestConnection``; not used directly."""

    def __init__(
        self,
        *,
        mode: StreamMode,
        limits: Limits,
        timeouts: Timeouts | None,
        now: float,
        send: tuple[bytes, int],
        receive: tuple[bytes, type[enum.IntEnum]],
    ) -> None:
        self._mode = mode
        self._limits = limits
        self._timeouts = timeouts
        self._now = now
        self._last_received_at = now
        self._last_progress_at = now
        self._timed_out = False
        self._sent_bytes = 0
        self._received_bytes = 0
        self._writer = FrameWriter(*send)
        sink = FrameSink(
            on_stream_header=self._on_stream_header,
            on_frame_header=self._on_frame_header,
            on_meta=self._on_meta,
            on_frame=self._on_frame,
            on_eof=self._on_eof,
            on_failed=self._on_failed,
            idstr_of=self._idstr_of,
        )
        self._reader = FrameReader(magic=receive[0], kinds=receive[1], sink=sink, limits=limits)

    # ------------------------------------------------------------------ sending

    def data_to_send(self) -> list[bytes | memoryview]:
        """What is queued, in order, without consuming it (may hold read-only RAM views).

        It stops before the footer of a frame whose body was not completely sent yet: that
        footer is computed from the bytes as sent.
        """
        return self._writer.data_to_send()

    def data_sent(self, nbytes: int, now: float) -> None:
        """The first ``nbytes`` of ``data_to_send()`` went to the kernel: consume them.

        Raises:
            LocalProtocolError: ``nbytes`` beyond what ``data_to_send()`` offered.
        """
        self._now = now
        self._writer.data_sent(nbytes)
        self._sent_bytes += nbytes
        if nbytes:
            self._last_progress_at = now

    @property
    def pending_send_bytes(self) -> int:
        """Queued bytes not yet sent."""
        return self._writer.pending_bytes

    @property
    def checksummed(self) -> tuple[bool, bool]:
        """Whether the frames (sent, received) from now on carry checksums.

        Not after a CHANNEL that said ``checksum: none`` on a TLS connection.
        """
        return self._writer.checked, self._reader.checked

    @property
    def sent_bytes(self) -> int:
        """Bytes reported sent with ``data_sent`` so far (what the kernel took)."""
        return self._sent_bytes

    @property
    def received_bytes(self) -> int:
        """Bytes received so far (``buffers_filled`` and ``receive_data``)."""
        return self._received_bytes

    def _queue(
        self,
        kind: int,
        section_id: int,
        meta: bytes,
        data: Sequence[memoryview] = (),
        data_len: int = 0,
    ) -> None:
        if not self._writer.pending_bytes:
            self._last_progress_at = self._now
        self._writer.queue_frame(kind, section_id, meta, data, data_len)

    # ------------------------------------------------------------------ receiving

    def get_buffers(self) -> list[memoryview]:
        """Writable buffers the next incoming bytes must fill, in order.

        ``[]`` means paused (an event waits to be taken) or the stream ended or failed.
        """
        return self._reader.get_buffers()

    def buffers_filled(self, nbytes: int, now: float) -> None:
        """A prefix of ``nbytes`` of ``get_buffers()`` was filled.

        Raises:
            LocalProtocolError: more bytes than ``get_buffers()`` offered (an I/O-layer bug).
        """
        self._now = now
        if nbytes:
            self._last_received_at = now
        self._reader.buffers_filled(nbytes)
        self._received_bytes += nbytes

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Copy ``data`` into ``get_buffers()``; bytes arriving while paused are held (bounded)."""
        self._now = now
        if len(data):
            self._last_received_at = now
        self._reader.receive_data(data)
        self._received_bytes += len(data)

    def peer_bytes_waiting(self, now: float) -> None:
        """Bytes from the peer wait in the transport, not read yet: the peer was not silent.

        A side that could not read for a while (its process stopped, its loop busy) must not
        call its peer silent for what waited in its own socket: the I/O layer says so before
        `handle_timer` judges the peer timeout, which then counts from ``now``.
        """
        self._now = now
        self._last_received_at = max(self._last_received_at, now)

    def receive_eof(self, now: float) -> None:
        """The peer closed its side of the connection."""
        self._now = now
        self._reader.receive_eof()

    def next_event(self) -> Event | None:
        """The next event, or None until more bytes arrive.

        Raises:
            RemoteProtocolError: the peer broke the protocol (after the events before it; the
                error is sticky).
        """
        return self._reader.next_event()

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """The next deadline (a PING due, or the peer-timeout check), or None."""
        if self._timeouts is None or self._timed_out:
            return None
        deadlines = [self._peer_deadline(self._timeouts.peer_timeout_s)]
        if self._ping_due_at() is not None:
            deadlines.append(self._ping_due_at())
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Act on deadlines: queue a PING (source) and/or report ``PeerTimedOut``."""
        self._now = now
        if self._timeouts is None or self._timed_out:
            return
        due = self._ping_due_at()
        if due is not None and now >= due:
            self._send_auto_ping(now)
        deadline = self._peer_deadline(self._timeouts.peer_timeout_s)
        if deadline is not None and now >= deadline:
            self._timed_out = True
            since = self._last_received_at if self._expects_peer() else self._last_progress_at
            self._reader.emit(PeerTimedOut(idle_s=now - since))

    def _peer_deadline(self, timeout_s: float) -> float | None:
        """Dead when nothing arrived for ``timeout_s`` and queued bytes made no progress."""
        pending = self._writer.pending_bytes
        stalled_at = self._last_progress_at + timeout_s if pending else None
        if not self._expects_peer():
            return stalled_at
        silent_at = self._last_received_at + timeout_s
        return silent_at if stalled_at is None else max(silent_at, stalled_at)

    def _ping_due_at(self) -> float | None:
        """When the next PING is due, if pinging is on now (the source overrides)."""
        return None

    def _send_auto_ping(self, now: float) -> None:
        """Queue the periodic PING (the source overrides; never called when not due)."""
        del now

    @abc.abstractmethod
    def _expects_peer(self) -> bool:
        """Whether the peer still has something to send us."""

    # ------------------------------------------------------------------ FrameSink callbacks

    @abc.abstractmethod
    def _on_stream_header(self, version: int) -> Event: ...

    @abc.abstractmethod
    def _on_frame_header(self, info: FrameInfo) -> bool: ...

    @abc.abstractmethod
    def _on_meta(self, info: FrameInfo, meta: memoryview) -> list[memoryview]: ...

    @abc.abstractmethod
    def _on_frame(self, info: FrameInfo, meta: memoryview) -> Event: ...

    @abc.abstractmethod
    def _on_eof(self) -> Event: ...

    @abc.abstractmethod
    def _on_failed(self) -> None: ...

    @abc.abstractmethod
    def _idstr_of(self, section_id: int) -> str | None: ...
