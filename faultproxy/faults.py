"""Fault specifications, in the spirit of Toxiproxy's toxics, and their JSON form.

A fault applies to one direction of every proxied connection (`main`: source to destination,
`return`: destination to source, or `both`):

| kind | what happens | parameters |
|---|---|---|
| cut | close both sides (FIN, RST with `reset`) or one `side` | `after_bytes`, `before_frame` |
| stall | stop forwarding, keep the connection open, until released | `before_frame` (or now) |
| latency | delay every chunk, in order | `ms`, `jitter_ms` |
| bandwidth | cap the forwarding rate | `bytes_per_s` |
| refuse | close new connections at once | — |

`before_frame` names a frame kind (`HANDOVER`, `LOADED`, `RESUMED`, `SECTION_END`, …): the fault
fires at the frame boundary just before it, so nothing of that frame passes. Cuts and stalls fire
once (a reconnection afterwards passes), unless `once` is false.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from protocol.codes import Command, FrameKind, ReturnKind

if TYPE_CHECKING:
    from collections.abc import Mapping

    from faultproxy.scanner import FrameStart


class FaultError(ValueError):
    """A fault specification is invalid (the message names the field)."""


class Direction(enum.StrEnum):
    """Which way the bytes flow."""

    MAIN = "main"
    RETURN = "return"
    BOTH = "both"

    def covers(self, direction: Direction) -> bool:
        """Whether a fault on `self` applies to bytes flowing in `direction`."""
        return self is Direction.BOTH or self is direction


class FaultKind(enum.StrEnum):
    """The fault types."""

    CUT = "cut"
    STALL = "stall"
    LATENCY = "latency"
    BANDWIDTH = "bandwidth"
    REFUSE = "refuse"


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameMatch:
    """A frame kind (main-stream command names such as HANDOVER included)."""

    name: str
    kind: int
    command: int | None
    direction: Direction

    @classmethod
    def parse(cls, name: str) -> FrameMatch:
        """Resolve a frame name; commands (HANDOVER, ABORT…) are COMMAND frames."""
        upper = name.upper().replace("-", "_")
        if upper in Command.__members__:
            return cls(
                name=upper,
                kind=FrameKind.COMMAND,
                command=Command[upper],
                direction=Direction.MAIN,
            )
        if upper in FrameKind.__members__:
            return cls(name=upper, kind=FrameKind[upper], command=None, direction=Direction.MAIN)
        if upper in ReturnKind.__members__:
            return cls(name=upper, kind=ReturnKind[upper], command=None, direction=Direction.RETURN)
        known = sorted({*Command.__members__, *FrameKind.__members__, *ReturnKind.__members__})
        raise FaultError(f"before_frame: unknown frame {name!r}; known: {', '.join(known)}")

    def matches(self, frame: FrameStart) -> bool:
        """Whether a frame about to pass is this one."""
        return frame.kind == self.kind and (self.command is None or frame.command == self.command)


@dataclass(kw_only=True, slots=True)
class Fault:
    """One fault; `fired` counts how often it acted."""

    kind: FaultKind
    direction: Direction = Direction.BOTH
    after_bytes: int | None = None
    before_frame: FrameMatch | None = None
    reset: bool = False
    side: str = "both"
    ms: float = 0.0
    jitter_ms: float = 0.0
    bytes_per_s: int = 0
    once: bool = True
    fault_id: int = 0
    fired: int = 0
    name: str = field(default="")

    def to_json(self) -> dict[str, object]:
        """The control API's view of this fault."""
        data: dict[str, object] = {
            "id": self.fault_id,
            "type": str(self.kind),
            "direction": str(self.direction),
            "once": self.once,
            "fired": self.fired,
        }
        optional = {
            "after_bytes": self.after_bytes,
            "before_frame": self.before_frame.name if self.before_frame else None,
            "reset": self.reset or None,
            "side": self.side if self.side != "both" else None,
            "ms": self.ms or None,
            "jitter_ms": self.jitter_ms or None,
            "bytes_per_s": self.bytes_per_s or None,
        }
        data.update({key: value for key, value in optional.items() if value is not None})
        return data

    @property
    def spent(self) -> bool:
        """A one-shot fault that already acted."""
        return self.once and self.fired > 0


_ALLOWED_KEYS = frozenset(
    {"type", "direction", "after_bytes", "before_frame", "reset", "side", "ms", "jitter_ms"}
    | {"bytes_per_s", "once"}
)


def parse_fault(spec: Mapping[str, object]) -> Fault:
    """Build a fault from its JSON form, or raise FaultError naming the bad field."""
    unknown = sorted(set(spec) - _ALLOWED_KEYS)
    if unknown:
        raise FaultError(f"unknown field(s): {', '.join(unknown)}")
    kind = _enum(FaultKind, spec.get("type"), "type")
    fault = Fault(
        kind=kind,
        direction=_enum(Direction, spec.get("direction", "both"), "direction"),
        after_bytes=_optional_int(spec, "after_bytes"),
        reset=_bool(spec, "reset", default=False),
        side=_choice(spec, "side", ("both", "client", "upstream")),
        ms=_number(spec, "ms"),
        jitter_ms=_number(spec, "jitter_ms"),
        bytes_per_s=_optional_int(spec, "bytes_per_s") or 0,
        once=_bool(spec, "once", default=kind in (FaultKind.CUT, FaultKind.STALL)),
    )
    frame = spec.get("before_frame")
    if frame is not None:
        if not isinstance(frame, str):
            raise FaultError("before_frame: expected a frame name")
        fault.before_frame = FrameMatch.parse(frame)
        if fault.direction is Direction.BOTH:
            fault.direction = fault.before_frame.direction
    _check(fault)
    return fault


def _check(fault: Fault) -> None:
    if fault.kind is FaultKind.CUT and fault.after_bytes is None and fault.before_frame is None:
        raise FaultError("cut: needs after_bytes or before_frame")
    if fault.kind is FaultKind.LATENCY and fault.ms <= 0:
        raise FaultError("latency: ms must be > 0")
    if fault.kind is FaultKind.BANDWIDTH and fault.bytes_per_s <= 0:
        raise FaultError("bandwidth: bytes_per_s must be > 0")
    if fault.before_frame is not None and not fault.direction.covers(fault.before_frame.direction):
        raise FaultError(
            f"before_frame: {fault.before_frame.name} flows {fault.before_frame.direction}, "
            f"not {fault.direction}"
        )


_E = TypeVar("_E", bound=enum.StrEnum)


def _enum(cls: type[_E], value: object, name: str) -> _E:
    try:
        return cls(str(value))
    except ValueError:
        allowed = ", ".join(member.value for member in cls)
        raise FaultError(f"{name}: {value!r} is not one of {allowed}") from None


def _choice(spec: Mapping[str, object], name: str, allowed: tuple[str, ...]) -> str:
    value = spec.get(name, allowed[0])
    if value not in allowed:
        raise FaultError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _optional_int(spec: Mapping[str, object], name: str) -> int | None:
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FaultError(f"{name}: expected a non-negative integer, got {value!r}")
    return value


def _number(spec: Mapping[str, object], name: str) -> float:
    value = spec.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultError(f"{name}: expected a non-negative number, got {value!r}")
    return float(value)


def _bool(spec: Mapping[str, object], name: str, *, default: bool) -> bool:
    value = spec.get(name, default)
    if not isinstance(value, bool):
        raise FaultError(f"{name}: expected true or false, got {value!r}")
    return value
