"""Migration parameters and capabilities, with QEMU's names, defaults and range checks.

QMP users set them with `migrate-set-parameters` / `migrate-set-capabilities` and read them with
the matching `query-*` commands. Values are validated here, before anything changes, so a bad
argument never leaves a half-applied update behind.

Deliberate differences from QEMU (documented in README):
- `max-bandwidth` defaults to 0, which means unlimited (QEMU's 128 MiB/s default is a known user
  complaint; in QEMU too, 0 disables the rate limit).
- `return-path` defaults to true: the ownership handover (docs/handover.md) needs it.
- Parameters prefixed `x-` are livemig's own (liveness and in-doubt resolution).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from migration.errors import ParameterError
from protocol import Timeouts

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_DOWNTIME_LIMIT_MS: Final = 2_000_000
MAX_BANDWIDTH_BYTES_PER_S: Final = 2**64 - 1
MAX_TIMEOUT_MS: Final = 3_600_000


@dataclass(frozen=True, slots=True)
class _IntRange:
    """Range and unit of one integer parameter, as QEMU states them in its errors."""

    low: int
    high: int
    unit: str


# QMP name -> (attribute, range). The attribute names carry the unit.
_PARAMETERS: Final[dict[str, tuple[str, _IntRange]]] = {
    "downtime-limit": ("downtime_limit_ms", _IntRange(0, MAX_DOWNTIME_LIMIT_MS, "ms")),
    "max-bandwidth": (
        "max_bandwidth_bytes_per_s",
        _IntRange(0, MAX_BANDWIDTH_BYTES_PER_S, "bytes/second"),
    ),
    "avail-switchover-bandwidth": (
        "avail_switchover_bandwidth_bytes_per_s",
        _IntRange(0, MAX_BANDWIDTH_BYTES_PER_S, "bytes/second"),
    ),
    "x-ping-interval-ms": ("ping_interval_ms", _IntRange(10, MAX_TIMEOUT_MS, "ms")),
    "x-peer-timeout-ms": ("peer_timeout_ms", _IntRange(100, MAX_TIMEOUT_MS, "ms")),
    "x-connect-timeout-ms": ("connect_timeout_ms", _IntRange(100, MAX_TIMEOUT_MS, "ms")),
    "x-resolve-interval-ms": ("resolve_interval_ms", _IntRange(10, MAX_TIMEOUT_MS, "ms")),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MigrationParameters:
    """The tunables of an outgoing migration (QEMU `MigrationParameters`)."""

    downtime_limit_ms: int = 300
    max_bandwidth_bytes_per_s: int = 0  # 0: unlimited
    avail_switchover_bandwidth_bytes_per_s: int = 0  # 0: use the measured bandwidth
    ping_interval_ms: int = 1000
    peer_timeout_ms: int = 10_000
    connect_timeout_ms: int = 5000
    resolve_interval_ms: int = 1000

    @property
    def timeouts(self) -> Timeouts:
        """The protocol's liveness timers for this migration's channels."""
        return Timeouts(
            ping_interval_s=self.ping_interval_ms / 1000,
            peer_timeout_s=self.peer_timeout_ms / 1000,
        )

    @property
    def resolve_interval_s(self) -> float:
        """Seconds between two resolve attempts (`x-resolve-interval-ms`)."""
        return self.resolve_interval_ms / 1000

    def updated(self, changes: Mapping[str, object]) -> MigrationParameters:
        """Return a copy with `changes` (QMP names) applied, or raise naming the bad parameter."""
        values: dict[str, int] = {}
        for name, value in changes.items():
            spec = _PARAMETERS.get(name)
            if spec is None:
                raise ParameterError(f"Parameter '{name}' is unexpected")
            attribute, allowed = spec
            values[attribute] = _checked_int(name, value, allowed)
        return dataclasses.replace(self, **values)

    def to_qmp(self) -> dict[str, int]:
        """Return the `query-migrate-parameters` reply."""
        return {name: getattr(self, attribute) for name, (attribute, _) in _PARAMETERS.items()}


def _checked_int(name: str, value: object, allowed: _IntRange) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"Invalid parameter type for '{name}', expected: integer")
    if not allowed.low <= value <= allowed.high:
        raise ParameterError(
            f"Parameter '{name}' expects an integer in the range of "
            f"{allowed.low} to {allowed.high} {allowed.unit}"
        )
    return value


# QMP name -> (attribute, default). QEMU's defaults, except return-path (see module docstring).
_CAPABILITIES: Final[dict[str, str]] = {
    "events": "events",
    "return-path": "return_path",
    "validate-uuid": "validate_uuid",
    "pause-before-switchover": "pause_before_switchover",
    "x-digest-check": "digest_check",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MigrationCapabilities:
    """Migration capabilities (QEMU `MigrationCapability`), all off but return-path."""

    events: bool = False
    return_path: bool = True
    validate_uuid: bool = False
    pause_before_switchover: bool = False
    digest_check: bool = False

    def updated(self, changes: Mapping[str, bool]) -> MigrationCapabilities:
        """Return a copy with `changes` (QMP names) applied, or raise naming the capability."""
        values: dict[str, bool] = {}
        for name, state in changes.items():
            attribute = _CAPABILITIES.get(name)
            if attribute is None:
                raise ParameterError(f"Parameter 'capability' does not accept value '{name}'")
            values[attribute] = state
        return dataclasses.replace(self, **values)

    def to_qmp(self) -> list[dict[str, object]]:
        """Return the `query-migrate-capabilities` reply."""
        return [
            {"capability": name, "state": getattr(self, attribute)}
            for name, attribute in _CAPABILITIES.items()
        ]

    def wire_names(self) -> tuple[str, ...]:
        """Capabilities the destination must follow (sent in the configuration)."""
        names = []
        if self.validate_uuid:
            names.append("validate-uuid")
        if self.digest_check:
            names.append("x-digest-check")
        return tuple(names)


def capability_names() -> tuple[str, ...]:
    """All capability names this VMM knows, in `query-migrate-capabilities` order."""
    return tuple(_CAPABILITIES)


def parameter_names() -> tuple[str, ...]:
    """All parameter names this VMM knows, in `query-migrate-parameters` order."""
    return tuple(_PARAMETERS)
