"""faultproxy: a TCP proxy on the migration path that injects the faults netem cannot here.

The kernel on these machines has no netem, so latency, jitter, stalls (no data moves, the
connection stays open), byte-exact cuts and cuts at protocol phases come from this proxy, in the
spirit of Toxiproxy's toxics. It understands livemig's framing (not its content), so a fault can
fire exactly before a given frame: "cut the connection before HANDOVER reaches the destination".

- `faultproxy.scanner`: follows frame boundaries in a byte stream (pure).
- `faultproxy.faults`: the fault specifications and their JSON form (pure).
- `faultproxy.proxy`: the asyncio proxy applying them.
- `faultproxy.control`: a small HTTP/JSON control API (`python -m faultproxy`, `livemig fault`).
"""

from __future__ import annotations

from faultproxy.faults import Direction, Fault, FaultKind, FrameMatch, parse_fault
from faultproxy.proxy import FaultProxy, ProxyStats

__all__ = [
    "Direction",
    "Fault",
    "FaultKind",
    "FaultProxy",
    "FrameMatch",
    "ProxyStats",
    "parse_fault",
]
