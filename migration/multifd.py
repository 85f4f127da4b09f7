"""Multifd on the source: pages spread over several channels, each page always on the same one.

QEMU's multifd (`migration/multifd.c`) hands each 128-page packet to whichever channel is free
and keeps a newer copy of a page from overtaking an older one with a sync per pass: every
channel sends a SYNC packet and the destination's channels all wait at it until the slowest
arrives. livemig stripes guest RAM instead: page `pfn` always travels on channel
``(pfn // STRIPE_PAGES) % channels``, so two copies of one page share a channel and TCP keeps
them in order; no channel ever waits for another. Each channel still sends MULTIFD_SYNC at the
end of each pass (the destination checks that every channel reached the same last pass), and
EOF once its last page left. The cost of striping: a guest that dirties only a few stripes
loads some channels more than others (each 512 KiB stripe is one QEMU packet, so a hot range of
a few MiB already spreads evenly over 2-16 channels).

The main channel keeps the configuration, the setup, the commands and the device state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from migration.inputs import ChannelKey
from protocol import ChannelRole, SourceConnection
from protocol.codec import Codec, Compressed, Compressor
from vmsim import PAGE_SIZE, PageBatch, PageKind

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from migration.params import MigrationParameters
    from protocol import MigrationConfiguration

STRIPE_PAGES: Final = 128
"""Pages of one stripe (QEMU's MULTIFD_PACKET_SIZE, 512 KiB): the unit of the spread."""


def multifd_key(index: int) -> ChannelKey:
    """The key of multifd channel `index`."""
    return ChannelKey(ChannelRole.MULTIFD, index)


def split_batch(
    batch: PageBatch, channels: int, stripe_pages: int = STRIPE_PAGES
) -> list[PageBatch]:
    """`batch` cut at stripe boundaries, one batch per channel (empty ones included).

    Runs are cut where they cross a stripe; page data stays views of the batch's buffers.
    """
    first = batch.first_pfns.astype(np.int64)
    count = batch.n_pages.astype(np.int64)
    if channels == 1 or not len(first):
        return [batch] + [PageBatch.empty() for _ in range(channels - 1)]
    stripe_first = first // stripe_pages
    pieces = (first + count - 1) // stripe_pages - stripe_first + 1
    run = np.repeat(np.arange(len(first)), pieces)
    stripe = stripe_first[run] + _ramp(pieces)
    start = np.maximum(first[run], stripe * stripe_pages)
    end = np.minimum(first[run] + count[run], (stripe + 1) * stripe_pages)
    channel = stripe % channels
    normal = batch.kinds[run] == PageKind.NORMAL
    data = _piece_views(batch, run, start - first[run], end - start, normal)
    return [
        _sub_batch(start, end, batch.kinds[run], normal, data, channel == c)
        for c in range(channels)
    ]


def _ramp(pieces: NDArray[np.int64]) -> NDArray[np.int64]:
    """0, 1, .., n-1 for each n in `pieces`, concatenated."""
    offsets = np.cumsum(pieces) - pieces
    return np.arange(int(pieces.sum())) - np.repeat(offsets, pieces)


def _piece_views(
    batch: PageBatch,
    run: NDArray[np.int64],
    skip_pages: NDArray[np.int64],
    n_pages: NDArray[np.int64],
    normal: NDArray[np.bool_],
) -> list[memoryview | None]:
    """The data view of each piece (None for ZERO pieces)."""
    data_index = np.cumsum(batch.kinds == PageKind.NORMAL) - 1
    views: list[memoryview | None] = [None] * len(run)
    for i in np.flatnonzero(normal).tolist():
        view = batch.data[int(data_index[run[i]])]
        lo = int(skip_pages[i]) * PAGE_SIZE
        hi = lo + int(n_pages[i]) * PAGE_SIZE
        views[i] = view if lo == 0 and hi == len(view) else view[lo:hi]
    return views


def _sub_batch(
    start: NDArray[np.int64],
    end: NDArray[np.int64],
    kinds: NDArray[np.uint8],
    normal: NDArray[np.bool_],
    data: list[memoryview | None],
    mask: NDArray[np.bool_],
) -> PageBatch:
    n_pages = (end - start)[mask]
    is_normal = normal[mask]
    views = tuple(v for v, m in zip(data, mask.tolist(), strict=True) if m and v is not None)
    return PageBatch(
        first_pfns=start[mask].astype(np.uint32),
        n_pages=n_pages.astype(np.uint16),
        kinds=kinds[mask],
        data=views,
        normal_pages=int(n_pages[is_normal].sum()),
        zero_pages=int(n_pages[~is_normal].sum()),
    )


Job = tuple[Compressor, Sequence[memoryview]]
"""One channel's part of a batch, with that channel's compressor (one job per channel)."""
MapJobs = Callable[[Callable[[Job], bytes], Sequence[Job]], Iterable[bytes]]
"""Runs a compression over several jobs: in order here, on worker threads in the daemon."""


def serial_map(compress_job: Callable[[Job], bytes], jobs: Sequence[Job]) -> list[bytes]:
    """`MapJobs` on the calling thread."""
    return [compress_job(job) for job in jobs]


@dataclass(frozen=True, slots=True)
class Compression:
    """`multifd-compression` and its level, and what runs the jobs.

    The loop's thread waits while the jobs run, so the guest cannot write a page being
    compressed: each channel's part of a batch compresses on its own worker (zlib and zstd
    release the GIL), in parallel on as many cores as there are channels.
    """

    codec: Codec
    level: int
    map_jobs: MapJobs = serial_map

    @staticmethod
    def compress(job: Job) -> bytes:
        """One part's NORMAL pages, compressed by its channel's compressor."""
        compressor, data = job
        return compressor.compress(data)


def compression(params: MigrationParameters, map_jobs: MapJobs) -> Compression | None:
    """The compression `multifd-compression` asks for, if any."""
    if params.multifd_compression == "none":
        return None
    codec = Codec(params.multifd_compression)
    level = params.multifd_zlib_level if codec is Codec.ZLIB else params.multifd_zstd_level
    return Compression(codec=codec, level=level, map_jobs=map_jobs)


class MultifdChannels:
    """The multifd channels of one migration on the source: their connections and state.

    Args:
        count: `multifd-channels`.
        now: the current time.
        compression: how pages are compressed, or None to send them raw.
        authenticated: the channels are TLS: their frames carry no checksum.
    """

    def __init__(
        self,
        count: int,
        *,
        now: float,
        compression: Compression | None = None,
        authenticated: bool = False,
    ) -> None:
        self.conns = {
            multifd_key(i): SourceConnection(timeouts=None, now=now, authenticated=authenticated)
            for i in range(count)
        }
        self.compression = compression
        self._compressors = (
            [Compressor(compression.codec, compression.level) for _ in range(count)]
            if compression is not None
            else []
        )
        self.raw_bytes = 0  # page bytes given to the compressor
        self.compressed_bytes = 0  # what they were sent as (raw when they did not shrink)
        self._opened: set[ChannelKey] = set()
        self._synced_pass = 0

    @property
    def count(self) -> int:
        """How many channels."""
        return len(self.conns)

    @property
    def all_open(self) -> bool:
        """Every channel connected and sent its handshake."""
        return len(self._opened) == len(self.conns)

    @property
    def sent_bytes(self) -> int:
        """Bytes the kernel took on all multifd channels."""
        return sum(conn.sent_bytes for conn in self.conns.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes queued on all multifd channels and not yet sent."""
        return sum(conn.pending_send_bytes for conn in self.conns.values())

    def opened(self, key: ChannelKey, config: MigrationConfiguration) -> None:
        """Channel `key` connected: its CHANNEL handshake names the migration and the index."""
        self.conns[key].open_multifd(config, key.serial)
        self._opened.add(key)

    def send(self, batch: PageBatch) -> list[ChannelKey]:
        """Queue `batch`'s pages, each on its stripe's channel; the channels that got some."""
        used = []
        parts = split_batch(batch, len(self.conns))
        encoded = self._compress(parts)
        for (key, conn), part, packed in zip(self.conns.items(), parts, encoded, strict=True):
            if part.n_runs:
                conn.send_pages(part, packed)
                used.append(key)
        return used

    def _compress(self, parts: list[PageBatch]) -> list[Compressed | None]:
        """Each part's compressed pages, or None where raw (no compression, no shrink)."""
        compression = self.compression
        packed: list[Compressed | None] = [None] * len(parts)
        if compression is None:
            return packed
        todo = [i for i, part in enumerate(parts) if part.normal_pages]
        jobs = [(self._compressors[i], parts[i].data) for i in todo]
        blobs = compression.map_jobs(compression.compress, jobs)
        for i, blob in zip(todo, blobs, strict=True):
            raw_len = parts[i].normal_pages * PAGE_SIZE
            self.raw_bytes += raw_len
            if len(blob) < raw_len:
                packed[i] = Compressed(compression.codec, blob)
            self.compressed_bytes += min(len(blob), raw_len)
        return packed

    def sync(self, pass_number: int) -> list[ChannelKey]:
        """MULTIFD_SYNC on every channel if a pass ended since the last one; the channels."""
        if pass_number <= self._synced_pass:
            return []
        self._synced_pass = pass_number
        for conn in self.conns.values():
            conn.send_multifd_sync(pass_number)
        return list(self.conns)

    def finish(self) -> list[ChannelKey]:
        """EOF on every channel (after the last pages); the channels."""
        for conn in self.conns.values():
            conn.send_eof()
        return list(self.conns)
