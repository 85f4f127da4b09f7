"""In-process micro-benchmarks: the protocol codec and vmsim's dirty tracking, against memcpy.

Both compare with a plain copy of the same bytes measured in the same run (ratios travel between
machines); see bench/protocol_codec.py and bench/vmsim_dirty.py, which also run on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench import protocol_codec, vmsim_dirty
from bench.common import header

if TYPE_CHECKING:
    from bench.common import Run


def micro(run: Run) -> dict[str, object]:
    ram_mib = run.pick(1024, 64)
    header(f"Protocol codec: encode + decode of {ram_mib} MiB of pages, against plain copies")
    codec = protocol_codec.measure(ram_mib=ram_mib)
    header(f"vmsim dirty tracking and page gathering, {ram_mib} MiB")
    dirty = vmsim_dirty.measure(ram_mib=ram_mib, repeat=run.pick(5, 2))
    return {"protocol_codec": codec, "vmsim_dirty": dirty}
