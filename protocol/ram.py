"""RAM run tables: packing a page batch, and checking and placing a received one.

A RAM PART/END frame's ``runs`` is a table of 8-byte ``>IHBx`` records (docs/protocol.md 1.5).
Everything here is vectorised with numpy: no Python work per page, only per run of pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from protocol.codes import RUN_RECORD_BYTES, PageKind
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.meta import U16_MAX, U32_MAX, bad

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

    from protocol.limits import Limits

RUN_DTYPE: Final = np.dtype(
    [("first_pfn", ">u4"), ("n_pages", ">u2"), ("kind", "u1"), ("pad", "u1")]
)
"""One run record on the wire: ``first_pfn u32, n_pages u16, kind u8, pad``."""

EOS_RECORD: Final = bytes([0, 0, 0, 0, 0, 0, int(PageKind.EOS), 0])
"""The EOS record that ends every run table."""
_PAGE_KINDS: Final = (int(PageKind.NORMAL), int(PageKind.ZERO), int(PageKind.XBZRLE))
_RESERVED_KINDS: Final = (int(PageKind.COMPRESSED),)
DELTA_LEN_DTYPE: Final = np.dtype(">u2")
"""One XBZRLE run's delta length in a RAM frame's ``xbzrle`` meta (u16, below a page)."""


class RamBatchLike(Protocol):
    """A batch of guest pages to send (vmsim's ``PageBatch`` has this shape).

    ``data`` holds one buffer per NORMAL run (``n_pages * page_size`` bytes: views of guest RAM,
    queued without copying) and one per XBZRLE run (its delta, shorter than a page), in run
    order.
    """

    @property
    def first_pfns(self) -> NDArray[np.integer[Any]]:
        """First page number of each run."""

    @property
    def n_pages(self) -> NDArray[np.integer[Any]]:
        """Pages in each run (1..65535)."""

    @property
    def kinds(self) -> NDArray[np.integer[Any]]:
        """``PageKind`` of each run (NORMAL or ZERO)."""

    @property
    def data(self) -> Sequence[memoryview]:
        """Page bytes of the NORMAL runs, in order."""

    @property
    def delta_lens(self) -> NDArray[np.int64] | None:
        """The XBZRLE runs' delta lengths when ``data`` ends with one buffer of them all.

        The XBZRLE runs then all come after the NORMAL runs (None: one buffer per XBZRLE run).
        """


class PageSink(Protocol):
    """Where a destination puts the pages of RAM frames (docs/architecture.md, the page path).

    For each RAM PART/END frame the connection checks the run table, then asks the sink for the
    buffers its page data must fill (``page_buffers``), receives the data into them, verifies
    the frame's checksum, and only then calls ``pages_loaded``: the sink makes the pages final
    (zero-fills ZERO runs, decodes or scatters data it received into scratch, marks pages
    received). A frame whose checksum fails never reaches ``pages_loaded``; the load then
    fails as a whole. vmsim's ``RamLoader`` is the sink the daemons use.
    """

    def page_buffers(self, runs: RunTable, data_len: int) -> list[memoryview]:
        """Writable buffers, in order, for the frame's ``data_len`` bytes of page data."""
        ...

    def pages_loaded(self, runs: RunTable) -> None:
        """The frame was verified: make its pages final."""
        ...

    def delta_pages(self, pfns: NDArray[np.int64]) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
        """Guest RAM as (pages x page size) and which of `pfns` to apply XBZRLE deltas to.

        The deltas are applied in place; in postcopy only to the pages not received yet.
        """
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class RunTable:
    """A checked run table (EOS record removed) and its totals."""

    runs: NDArray[np.void]
    first_pfn: NDArray[np.int64]
    end_pfn: NDArray[np.int64]
    normal: NDArray[np.bool_]
    normal_pages: int
    zero_pages: int
    xbzrle: NDArray[np.bool_] | None = None  # XBZRLE runs (one page each), if any
    delta_lens: NDArray[np.int64] | None = None  # their delta lengths, in run order
    xbzrle_pages: int = 0

    def without_xbzrle(self) -> RunTable:
        """The NORMAL and ZERO runs alone (what a page sink places)."""
        if self.xbzrle is None:
            return self
        keep = ~self.xbzrle
        return RunTable(
            runs=self.runs[keep],
            first_pfn=self.first_pfn[keep],
            end_pfn=self.end_pfn[keep],
            normal=self.normal[keep],
            normal_pages=self.normal_pages,
            zero_pages=self.zero_pages,
        )


def pack_runs(batch: RamBatchLike) -> bytes:
    """The packed run table of ``batch``, EOS record appended.

    Raises:
        LocalProtocolError: BAD_METADATA if the arrays disagree in length or do not fit the
            record fields.
    """
    try:
        first = np.asarray(batch.first_pfns, dtype=np.int64).reshape(-1)
        n_pages = np.asarray(batch.n_pages, dtype=np.int64).reshape(-1)
        kinds = np.asarray(batch.kinds, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        msg = f"page batch arrays are not integer arrays: {exc}"
        raise bad(msg) from exc
    if not len(first) == len(n_pages) == len(kinds):
        msg = f"page batch arrays differ in length: {len(first)}, {len(n_pages)}, {len(kinds)}"
        raise bad(msg)
    if _outside(first, 0, U32_MAX) or _outside(n_pages, 0, U16_MAX) or _outside(kinds, 0, 255):
        msg = "page batch values do not fit the run record (u32 pfn, u16 count, u8 kind)"
        raise bad(msg)
    records = np.zeros(len(first) + 1, dtype=RUN_DTYPE)
    records["first_pfn"][:-1] = first
    records["n_pages"][:-1] = n_pages
    records["kind"][:-1] = kinds
    records["kind"][-1] = PageKind.EOS
    return records.tobytes()


def _outside(values: NDArray[np.int64], lo: int, hi: int) -> bool:
    return bool(len(values)) and (int(values.min()) < lo or int(values.max()) > hi)


def parse_runs(
    packed: bytes,
    *,
    page_size: int,
    ram_pages: int,
    data_len: int | None,
    limits: Limits,
    delta_lens: bytes | None = None,
) -> RunTable:
    """Check a received (or about to be sent) run table against RAM and the frame's data length.

    ``data_len`` None skips the length check (the sender checks each buffer instead).
    ``delta_lens`` (the ``xbzrle`` meta) are the XBZRLE runs' delta lengths; without it an
    XBZRLE run is refused. A few numpy reductions per frame, none per page.

    Raises:
        LocalProtocolError: LIMIT_EXCEEDED (too many records), UNSUPPORTED (compressed runs, or
            XBZRLE without lengths), BAD_PAGE_ADDRESS (beyond RAM) or BAD_METADATA.
    """
    count, rest = divmod(len(packed), RUN_RECORD_BYTES)
    if rest or not count:
        msg = f"'runs' is {len(packed)} bytes, not a non-empty multiple of {RUN_RECORD_BYTES}"
        raise bad(msg)
    if count > limits.max_runs:
        msg = f"{count} run records exceeds max_runs({limits.max_runs})"
        raise LocalProtocolError(msg, code=ErrorCode.LIMIT_EXCEEDED)
    if packed[-RUN_RECORD_BYTES:] != EOS_RECORD:
        msg = "the run table must end with one EOS record (first_pfn 0, n_pages 0)"
        raise bad(msg)
    runs = np.frombuffer(packed, dtype=RUN_DTYPE, count=count - 1)
    first = runs["first_pfn"].astype(np.int64)
    n_pages = runs["n_pages"].astype(np.int64)
    end = first + n_pages
    if count > 1:
        _check_kinds(runs)
        _check_extents(first, n_pages, end, ram_pages)
    normal = runs["kind"] == PageKind.NORMAL
    total_pages = int(n_pages.sum())
    normal_pages = int(n_pages[normal].sum()) if count > 1 else 0
    xbzrle, lens = _xbzrle_runs(runs, n_pages, delta_lens, page_size)
    delta_bytes = int(lens.sum()) if lens is not None else 0
    if data_len is not None and data_len != normal_pages * page_size + delta_bytes:
        msg = (
            f"data_len {data_len} != {normal_pages} NORMAL pages x page_size {page_size}"
            f" + {delta_bytes} XBZRLE bytes"
        )
        raise bad(msg)
    xbzrle_pages = int(xbzrle.sum()) if xbzrle is not None else 0
    return RunTable(
        runs=runs,
        first_pfn=first,
        end_pfn=end,
        normal=normal,
        normal_pages=normal_pages,
        zero_pages=total_pages - normal_pages - xbzrle_pages,
        xbzrle=xbzrle,
        delta_lens=lens,
        xbzrle_pages=xbzrle_pages,
    )


def _xbzrle_runs(
    runs: NDArray[np.void], n_pages: NDArray[np.int64], delta_lens: bytes | None, page_size: int
) -> tuple[NDArray[np.bool_] | None, NDArray[np.int64] | None]:
    """The XBZRLE mask and delta lengths, checked (one page per run, each delta below a page)."""
    xbzrle = runs["kind"] == PageKind.XBZRLE
    count = int(xbzrle.sum())
    if delta_lens is None:
        if count:
            msg = "XBZRLE runs without their 'xbzrle' delta lengths"
            raise LocalProtocolError(msg, code=ErrorCode.UNSUPPORTED)
        return None, None
    if len(delta_lens) != count * DELTA_LEN_DTYPE.itemsize:
        msg = f"'xbzrle' has {len(delta_lens)} bytes for {count} XBZRLE runs (2 bytes each)"
        raise bad(msg)
    lens = np.frombuffer(delta_lens, dtype=DELTA_LEN_DTYPE).astype(np.int64)
    if count and (int(n_pages[xbzrle].max()) != 1 or int(lens.max()) >= page_size):
        msg = "an XBZRLE run covers one page and its delta is shorter than a page"
        raise bad(msg)
    return xbzrle, lens


def _check_kinds(runs: NDArray[np.void]) -> None:
    kinds = runs["kind"]
    if int(kinds.min()) >= PageKind.NORMAL and int(kinds.max()) <= PageKind.XBZRLE:
        if runs["pad"].any():
            msg = "run record padding must be 0"
            raise bad(msg)
        return
    if np.any(np.isin(kinds, _RESERVED_KINDS)):
        msg = "compressed page runs are not supported (multifd-compression uses PAGES)"
        raise LocalProtocolError(msg, code=ErrorCode.UNSUPPORTED)
    kind = int(kinds[np.argmax(~np.isin(kinds, _PAGE_KINDS))])
    where = "EOS before the end of the run table" if kind == PageKind.EOS else "unknown"
    msg = f"page kind 0x{kind:02x}: {where}"
    raise bad(msg)


def _check_extents(
    first: NDArray[np.int64], n_pages: NDArray[np.int64], end: NDArray[np.int64], ram_pages: int
) -> None:
    if int(n_pages.min()) == 0:
        msg = "a page run has n_pages 0"
        raise bad(msg)
    if int(end.max()) > ram_pages:
        i = int(np.argmax(end > ram_pages))
        msg = f"pages {int(first[i])}..{int(end[i]) - 1} are beyond guest RAM ({ram_pages} pages)"
        raise LocalProtocolError(msg, code=ErrorCode.BAD_PAGE_ADDRESS)
    if (first[1:] >= end[:-1]).all():
        return  # ascending without overlap: the common case, no sort needed
    order = np.argsort(first, kind="stable")
    if np.any(first[order][1:] < end[order][:-1]):
        msg = "page runs overlap within one frame"
        raise bad(msg)


def copy_into(targets: Sequence[memoryview], pieces: Sequence[memoryview | bytes]) -> None:
    """Copy `pieces`, in order, across `targets`, in order: each byte once, nothing joined.

    Raises:
        LocalProtocolError: INTERNAL if the pieces hold more bytes than the targets.
    """
    remaining = iter(targets)
    target, at = next(remaining, None), 0
    for piece in pieces:
        view, pos = memoryview(piece), 0
        while pos < len(view):
            while target is not None and at == len(target):
                target, at = next(remaining, None), 0
            if target is None:
                msg = "page data beyond the sink's buffers"
                raise LocalProtocolError(msg, code=ErrorCode.INTERNAL)
            take = min(len(target) - at, len(view) - pos)
            target[at : at + take] = view[pos : pos + take]
            at, pos = at + take, pos + take


def check_compressed_len(data_len: int, raw_len: int) -> None:
    """Compressed page data must be smaller than the pages (pages that do not shrink go raw).

    It also bounds what a receiver allocates for it by what the run table announces.

    Raises:
        LocalProtocolError: BAD_METADATA otherwise.
    """
    if not 0 < data_len < raw_len:
        msg = f"compressed page data of {data_len} bytes for {raw_len} bytes of pages"
        raise bad(msg)


def check_batch_data(batch: RamBatchLike, table: RunTable, page_size: int) -> list[memoryview]:
    """Read-only byte views of the batch's page data, checked against the run table.

    Raises:
        LocalProtocolError: BAD_METADATA if the buffers do not match the NORMAL runs.
    """
    data = batch.data
    expected = (table.end_pfn - table.first_pfn) * page_size
    carries = table.normal
    if table.xbzrle is not None and table.delta_lens is not None:
        expected[table.xbzrle] = table.delta_lens
        carries = table.normal | table.xbzrle
        if batch.delta_lens is not None:
            _check_deltas_last(table.normal, table.xbzrle)
            carries = table.normal.copy()
            expected = np.append(expected, int(table.delta_lens.sum()))
            carries = np.append(carries, True)
    expected = expected[carries]
    if len(data) != len(expected):
        msg = f"page batch has {len(data)} data buffers for {len(expected)} NORMAL/XBZRLE runs"
        raise bad(msg)
    try:
        views = [_byte_view(d) for d in data]
    except (TypeError, ValueError) as exc:
        msg = f"page data is not a contiguous buffer: {exc}"
        raise bad(msg) from exc
    sizes = np.fromiter(map(len, views), dtype=np.int64, count=len(views))
    if not np.array_equal(sizes, expected):
        i = int(np.argmax(sizes != expected))
        msg = f"data buffer {i} is {int(sizes[i])} bytes, its run needs {int(expected[i])}"
        raise bad(msg)
    return views


def _check_deltas_last(normal: NDArray[np.bool_], xbzrle: NDArray[np.bool_]) -> None:
    """One buffer of every delta needs every XBZRLE run after every NORMAL run."""
    normal_runs = np.flatnonzero(normal)
    if len(normal_runs) and int(normal_runs[-1]) > int(np.flatnonzero(xbzrle)[0]):
        msg = "a page batch with its deltas in one buffer has a NORMAL run after an XBZRLE run"
        raise bad(msg)


def pack_delta_lens(batch: RamBatchLike) -> bytes | None:
    """The ``xbzrle`` meta of a batch: its XBZRLE runs' data lengths (None: it has none)."""
    kinds = np.asarray(batch.kinds).reshape(-1)
    carrying = kinds[np.isin(kinds, (PageKind.NORMAL, PageKind.XBZRLE))]
    if not np.any(carrying == PageKind.XBZRLE):
        return None
    if batch.delta_lens is not None:
        return _pack_lens(np.asarray(batch.delta_lens), int((carrying == PageKind.XBZRLE).sum()))
    if len(carrying) != len(batch.data):
        msg = f"page batch has {len(batch.data)} data buffers for {len(carrying)} runs with data"
        raise bad(msg)
    lens = [len(memoryview(d).cast("B")) for d, k in zip(batch.data, carrying.tolist(), strict=True)
            if k == PageKind.XBZRLE]  # fmt: skip
    return _pack_lens(np.asarray(lens, dtype=np.int64), len(lens))


def _pack_lens(lens: NDArray[np.integer[Any]], xbzrle_runs: int) -> bytes:
    if len(lens) != xbzrle_runs:
        msg = f"page batch has {len(lens)} delta lengths for {xbzrle_runs} XBZRLE runs"
        raise bad(msg)
    if int(lens.max()) > U16_MAX or int(lens.min()) < 0:
        msg = "an XBZRLE delta is longer than 65535 bytes"
        raise bad(msg)
    return lens.astype(DELTA_LEN_DTYPE).tobytes()


def spread_runs(starts: NDArray[np.int64], counts: NDArray[np.integer[Any]]) -> NDArray[np.int64]:
    """``starts[k] + j`` for every ``j < counts[k]``, run after run (every page of page runs)."""
    counts = counts.astype(np.int64, copy=False)
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()), dtype=np.int64)


def _byte_view(buf: memoryview) -> memoryview:
    view = memoryview(buf)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view.toreadonly()
