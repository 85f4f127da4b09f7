"""The send queue: frames as lists of buffers, checksummed as they are sent.

A frame's header and meta are our own immutable bytes, hashed when queued. Its data (views of
guest RAM that the vCPU may still write) is hashed in ``data_sent()`` as it is consumed, and the
footer is appended only once the whole body went out. ``data_to_send()`` therefore stops at the
end of the first frame whose footer is not yet known: a torn page is torn consistently with its
checksum (docs/architecture.md, "the data path").
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from typing import TYPE_CHECKING

from protocol.checksum import new_hasher
from protocol.codes import FRAME_FOOTER_BYTES
from protocol.errors import FrameInfo, LocalProtocolError
from protocol.frames import encode_footer, encode_frame_header, encode_stream_header

if TYPE_CHECKING:
    from collections.abc import Sequence

    from protocol.checksum import Hasher

Buffer = bytes | memoryview


class _Frame:
    """One queued frame (or the stream header) and how much of it was sent.

    ``ends[i]`` is the frame offset just past ``parts[i]``; ``sent`` counts the bytes sent, so
    consuming and hashing walk the parts with bisection and one C call per data part.
    """

    __slots__ = ("ends", "hasher", "lazy_from", "parts", "section_id", "sent")

    def __init__(
        self, parts: list[Buffer], section_id: int, hasher: Hasher | None, lazy_from: int = 0
    ) -> None:
        self.parts = parts
        self.ends = list(itertools.accumulate(len(part) for part in parts))
        self.section_id = section_id
        self.hasher = hasher  # None: nothing left to hash (eager frames, stream header)
        self.lazy_from = lazy_from  # frame offset where the lazily hashed data starts
        self.sent = 0

    @property
    def footer_known(self) -> bool:
        """The footer is queued (always, except while a lazy frame's body is being sent)."""
        return self.hasher is None

    @property
    def left(self) -> int:
        """Bytes of the queued parts not yet sent."""
        return self.ends[-1] - self.sent

    @property
    def pos(self) -> int:
        """Index of the first part not completely sent."""
        return bisect.bisect_right(self.ends, self.sent)

    @property
    def done(self) -> bool:
        """Everything, footer included, was sent."""
        return self.hasher is None and self.sent == self.ends[-1]

    def unsent(self) -> list[Buffer]:
        """The parts (the first one cut) not yet sent."""
        pos = self.pos
        if pos == len(self.parts):
            return []
        start = self.ends[pos - 1] if pos else 0
        if self.sent == start:
            return self.parts[pos:]
        return [memoryview(self.parts[pos])[self.sent - start :], *self.parts[pos + 1 :]]

    def consume(self, nbytes: int) -> int:
        """Mark up to ``nbytes`` sent, hashing lazy data parts; return the bytes left over."""
        stop = min(self.sent + nbytes, self.ends[-1])
        if self.hasher is not None and stop > self.lazy_from:
            self._hash(max(self.sent, self.lazy_from), stop, self.hasher)
        taken = stop - self.sent
        self.sent = stop
        if self.hasher is not None and stop == self.ends[-1]:
            self.parts.append(encode_footer(self.section_id, self.hasher.intdigest()))
            self.ends.append(stop + FRAME_FOOTER_BYTES)
            self.hasher = None
        return nbytes - taken

    def _hash(self, start: int, stop: int, hasher: Hasher) -> None:
        """Hash frame bytes ``start:stop`` (within the data parts), one update per part."""
        parts, ends = self.parts, self.ends
        first = bisect.bisect_right(ends, start)
        last = bisect.bisect_left(ends, stop)
        part_start = ends[first - 1] if first else 0
        if first == last:
            hasher.update(memoryview(parts[first])[start - part_start : stop - part_start])
            return
        head = parts[first]
        hasher.update(head if start == part_start else memoryview(head)[start - part_start :])
        for part in parts[first + 1 : last]:
            hasher.update(part)
        tail_start = ends[last - 1]
        tail = parts[last]
        hasher.update(tail if stop == ends[last] else memoryview(tail)[: stop - tail_start])


class FrameWriter:
    """Frames queued for one stream (main stream or return path)."""

    def __init__(self, magic: bytes, version: int) -> None:
        self.magic = magic
        self.version = version
        self.checked = True  # False: later frames carry checksum 0 (the transport is TLS)
        self.started = False
        self.frames_queued = 0
        self.bytes_queued = 0  # stream offset of the next frame
        self._frames: deque[_Frame] = deque()
        self._pending = 0
        self._cache: tuple[list[Buffer], int] | None = None

    @property
    def pending_bytes(self) -> int:
        """Queued bytes not yet sent, footers not yet computed included."""
        return self._pending

    def next_frame_info(
        self, kind: int, section_id: int, meta_len: int, data_len: int
    ) -> FrameInfo:
        """Where the next queued frame will be."""
        offset = self.bytes_queued if self.started else self.bytes_queued + 8
        return FrameInfo(
            index=self.frames_queued,
            offset=offset,
            kind=kind,
            section_id=section_id,
            meta_len=meta_len,
            data_len=data_len,
        )

    def queue_frame(
        self,
        kind: int,
        section_id: int,
        meta: bytes,
        data: Sequence[memoryview] = (),
        data_len: int = 0,
    ) -> None:
        """Queue one frame (the stream header first if this is the first frame).

        ``data`` are byte views (``len == nbytes``) totalling ``data_len`` bytes.
        """
        if not self.started:
            self._push(_Frame([encode_stream_header(self.magic, self.version)], 0, None))
            self.started = True
        header = encode_frame_header(kind, section_id, len(meta), data_len)
        hasher = new_hasher(self.version, checked=self.checked)
        hasher.update(header)
        hasher.update(meta)
        if data_len:
            frame = _Frame([header, meta, *data], section_id, hasher, len(header) + len(meta))
            self._pending += FRAME_FOOTER_BYTES
        else:
            footer = encode_footer(section_id, hasher.intdigest())
            frame = _Frame([header, meta, footer], section_id, None)
        self._push(frame)
        self.frames_queued += 1

    def _push(self, frame: _Frame) -> None:
        size = frame.left
        self._frames.append(frame)
        self._pending += size
        self.bytes_queued += size + (0 if frame.footer_known else FRAME_FOOTER_BYTES)
        self._cache = None

    def data_to_send(self) -> list[Buffer]:
        """The queued buffers, in order, up to the first footer not yet computed."""
        if self._cache is None:
            out: list[Buffer] = []
            total = 0
            for frame in self._frames:
                out.extend(frame.unsent())
                total += frame.left
                if not frame.footer_known:
                    break
            self._cache = (out, total)
        return self._cache[0].copy()

    def data_sent(self, nbytes: int) -> None:
        """Consume the first ``nbytes`` of ``data_to_send()``, hashing lazy data as it goes.

        Raises:
            LocalProtocolError: ``nbytes`` is negative or beyond what ``data_to_send()`` offers.
        """
        if not nbytes:
            return
        if self._cache is None:
            self.data_to_send()
        sendable = self._cache[1] if self._cache is not None else 0
        if not 0 < nbytes <= sendable:
            msg = f"data_sent({nbytes}) but only {sendable} bytes are ready to send"
            raise LocalProtocolError(msg)
        self._cache = None
        self._pending -= nbytes
        frames = self._frames
        while nbytes:
            nbytes = frames[0].consume(nbytes)
            if frames[0].done:
                frames.popleft()
