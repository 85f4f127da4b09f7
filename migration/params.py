"""Migration parameters and capabilities, with QEMU's names, defaults and range checks.

QMP users set them with `migrate-set-parameters` / `migrate-set-capabilities` and read them with
the matching `query-*` commands. Values are validated here, before anything changes, so a bad
argument never leaves a half-applied update behind.

Deliberate differences from QEMU (documented in README):
- `max-bandwidth` defaults to 0, which means unlimited (QEMU's 128 MiB/s default is a known user
  complaint; in QEMU too, 0 disables the rate limit).
- `return-path` defaults to true: the ownership handover (docs/handover.md) needs it.
- Parameters prefixed `x-` are livemig's own (liveness, in-doubt resolution, the timeout
  policies KubeVirt users know as `completionTimeoutPerGiB` and `progressTimeout`, the length of
  a throttle period, fixed at one second in QEMU), except `x-vcpu-dirty-limit-period`, which is
  QEMU's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from migration.errors import ParameterError
from protocol import MAX_MULTIFD_CHANNELS, Timeouts

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_DOWNTIME_LIMIT_MS: Final = 2_000_000
MAX_BANDWIDTH_BYTES_PER_S: Final = 2**64 - 1
MAX_TIMEOUT_MS: Final = 3_600_000
PREEMPT_CAPABILITY: Final = "postcopy-preempt"
POSTCOPY_XBZRLE_CAPABILITY: Final = "x-postcopy-xbzrle"
"""Beyond QEMU: after the switch, pages the destination holds an old copy of go as XBZRLE
deltas from it (QEMU sends every page whole in postcopy)."""
MAX_DIRTY_LIMIT_MB_S: Final = 2**32 - 1
MAX_DIRTY_LIMIT_PERIOD_MS: Final = 1000  # QEMU: 1 to 1000 ms
MAX_POLICY_TIMEOUT_S: Final = 86_400
MAX_XBZRLE_CACHE_BYTES: Final = 1 << 40
MIN_TRIGGER_PERIOD_MS: Final = 100
MAX_TRIGGER_PERIOD_MS: Final = 60_000


@dataclass(frozen=True, slots=True)
class _IntRange:
    """Range and unit of one integer parameter, as QEMU states them in its errors."""

    low: int
    high: int
    unit: str

    def check(self, name: str, value: object) -> int:
        """The value, or raise naming the parameter and the range."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(f"Invalid parameter type for '{name}', expected: integer")
        if not self.low <= value <= self.high:
            raise ParameterError(
                f"Parameter '{name}' expects an integer in the range of "
                f"{self.low} to {self.high} {self.unit}".rstrip()
            )
        return value


@dataclass(frozen=True, slots=True)
class _Boolean:
    """A boolean parameter."""

    def check(self, name: str, value: object) -> bool:
        """The value, or raise naming the parameter."""
        if not isinstance(value, bool):
            raise ParameterError(f"Invalid parameter type for '{name}', expected: boolean")
        return value


@dataclass(frozen=True, slots=True)
class _Choice:
    """A parameter taking one of a few names; `unavailable` ones are refused with a reason."""

    values: tuple[str, ...]
    unavailable: tuple[tuple[str, str], ...] = ()

    def check(self, name: str, value: object) -> str:
        """The value, or raise naming the parameter and what it accepts."""
        if not isinstance(value, str):
            raise ParameterError(f"Invalid parameter type for '{name}', expected: string")
        why = dict(self.unavailable).get(value)
        if why is not None:
            raise ParameterError(f"Parameter '{name}' cannot be '{value}' yet: {why}")
        if value not in self.values:
            raise ParameterError(
                f"Parameter '{name}' does not accept value '{value}' "
                f"(expected one of {', '.join(self.values)})"
            )
        return value


@dataclass(frozen=True, slots=True)
class _Name:
    """A string naming something else (an object id, a host); null resets it to "" (QEMU)."""

    max_chars: int = 255

    def check(self, name: str, value: object) -> str:
        """The value, or raise naming the parameter."""
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ParameterError(f"Invalid parameter type for '{name}', expected: string")
        if len(value) > self.max_chars or not value.isprintable():
            raise ParameterError(
                f"Parameter '{name}' expects printable text of at most {self.max_chars} characters"
            )
        return value


_Spec = _IntRange | _Boolean | _Choice | _Name
TIMEOUT_ACTIONS: Final = ("cancel", "throttle", "postcopy")
ZERO_PAGE_DETECTIONS: Final = ("none", "legacy", "multifd")
MULTIFD_COMPRESSIONS: Final = ("none", "zlib", "zstd")

# QMP name -> (attribute, what it takes). The attribute names carry the unit.
_PARAMETERS: Final[dict[str, tuple[str, _Spec]]] = {
    "downtime-limit": ("downtime_limit_ms", _IntRange(0, MAX_DOWNTIME_LIMIT_MS, "ms")),
    "max-bandwidth": (
        "max_bandwidth_bytes_per_s",
        _IntRange(0, MAX_BANDWIDTH_BYTES_PER_S, "bytes/second"),
    ),
    "avail-switchover-bandwidth": (
        "avail_switchover_bandwidth_bytes_per_s",
        _IntRange(0, MAX_BANDWIDTH_BYTES_PER_S, "bytes/second"),
    ),
    "throttle-trigger-threshold": ("throttle_trigger_threshold_percent", _IntRange(1, 100, "%")),
    "cpu-throttle-initial": ("cpu_throttle_initial_percent", _IntRange(1, 99, "%")),
    "cpu-throttle-increment": ("cpu_throttle_increment_percent", _IntRange(1, 99, "%")),
    "cpu-throttle-tailslow": ("cpu_throttle_tailslow", _Boolean()),
    "max-cpu-throttle": ("max_cpu_throttle_percent", _IntRange(1, 99, "%")),
    "x-throttle-trigger-period": (
        "throttle_trigger_period_ms",
        _IntRange(MIN_TRIGGER_PERIOD_MS, MAX_TRIGGER_PERIOD_MS, "ms"),
    ),
    "vcpu-dirty-limit": ("vcpu_dirty_limit_mb_per_s", _IntRange(1, MAX_DIRTY_LIMIT_MB_S, "MB/s")),
    "x-vcpu-dirty-limit-period": (
        "vcpu_dirty_limit_period_ms",
        _IntRange(1, MAX_DIRTY_LIMIT_PERIOD_MS, "ms"),
    ),
    "x-completion-timeout-per-gib": (
        "completion_timeout_per_gib_s",
        _IntRange(0, MAX_POLICY_TIMEOUT_S, "seconds"),
    ),
    "x-progress-timeout": ("progress_timeout_s", _IntRange(0, MAX_POLICY_TIMEOUT_S, "seconds")),
    "x-timeout-action": (
        "timeout_action",
        _Choice(TIMEOUT_ACTIONS),
    ),
    "zero-page-detection": ("zero_page_detection", _Choice(ZERO_PAGE_DETECTIONS)),
    "multifd-channels": ("multifd_channels", _IntRange(1, MAX_MULTIFD_CHANNELS, "channels")),
    "multifd-compression": ("multifd_compression", _Choice(MULTIFD_COMPRESSIONS)),
    "max-postcopy-bandwidth": (
        "max_postcopy_bandwidth_bytes_per_s",
        _IntRange(0, MAX_BANDWIDTH_BYTES_PER_S, "bytes/second"),
    ),
    "xbzrle-cache-size": (
        "xbzrle_cache_size_bytes",
        _IntRange(4096, MAX_XBZRLE_CACHE_BYTES, "bytes"),
    ),
    "multifd-zlib-level": ("multifd_zlib_level", _IntRange(0, 9, "")),
    "multifd-zstd-level": ("multifd_zstd_level", _IntRange(0, 20, "")),
    "tls-creds": ("tls_creds", _Name()),
    "tls-hostname": ("tls_hostname", _Name()),
    "tls-authz": ("tls_authz", _Name()),
    "x-ping-interval-ms": ("ping_interval_ms", _IntRange(10, MAX_TIMEOUT_MS, "ms")),
    "x-peer-timeout-ms": ("peer_timeout_ms", _IntRange(100, MAX_TIMEOUT_MS, "ms")),
    "x-connect-timeout-ms": ("connect_timeout_ms", _IntRange(100, MAX_TIMEOUT_MS, "ms")),
    "x-resolve-interval-ms": ("resolve_interval_ms", _IntRange(10, MAX_TIMEOUT_MS, "ms")),
    "x-auto-recover": ("auto_recover", _Boolean()),
    "x-precopy-resume-ms": ("precopy_resume_ms", _IntRange(0, MAX_TIMEOUT_MS, "ms")),
    "x-tls-frame-checksums": ("tls_frame_checksums", _Boolean()),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MigrationParameters:
    """The tunables of an outgoing migration (QEMU `MigrationParameters`)."""

    downtime_limit_ms: int = 300
    max_bandwidth_bytes_per_s: int = 0  # 0: unlimited
    avail_switchover_bandwidth_bytes_per_s: int = 0  # 0: use the measured bandwidth
    throttle_trigger_threshold_percent: int = 50
    cpu_throttle_initial_percent: int = 20
    cpu_throttle_increment_percent: int = 10
    cpu_throttle_tailslow: bool = False
    max_cpu_throttle_percent: int = 99
    throttle_trigger_period_ms: int = 1000  # QEMU's fixed second
    vcpu_dirty_limit_mb_per_s: int = 1
    vcpu_dirty_limit_period_ms: int = 1000
    completion_timeout_per_gib_s: int = 0  # 0: off
    progress_timeout_s: int = 0  # 0: off
    timeout_action: str = "cancel"
    zero_page_detection: str = "multifd"  # QEMU 9's default (legacy: found by the main thread)
    multifd_channels: int = 2
    multifd_compression: str = "none"
    multifd_zlib_level: int = 1
    multifd_zstd_level: int = 1
    xbzrle_cache_size_bytes: int = 64 << 20  # QEMU's 64 MiB
    max_postcopy_bandwidth_bytes_per_s: int = 0  # 0: unlimited (QEMU's default)
    tls_creds: str = ""  # "": no TLS
    tls_hostname: str = ""  # "": the host of the migration URI
    tls_authz: str = ""  # "": any client the CA signed
    ping_interval_ms: int = 1000
    peer_timeout_ms: int = 10_000
    connect_timeout_ms: int = 5000
    resolve_interval_ms: int = 1000
    auto_recover: bool = True  # a paused postcopy reconnects by itself, with backoff
    precopy_resume_ms: int = 10_000  # a broken precopy reconnects this long (0: fails at once)
    tls_frame_checksums: bool = False  # with TLS, the AEAD authenticates: frames carry no xxh3

    @property
    def timeouts(self) -> Timeouts:
        """The protocol's liveness timers for this migration's channels."""
        return Timeouts(
            ping_interval_s=self.ping_interval_ms / 1000,
            peer_timeout_s=self.peer_timeout_ms / 1000,
        )

    @property
    def precopy_resume_s(self) -> float:
        """How long a broken precopy may take to reconnect (`x-precopy-resume-ms`)."""
        return self.precopy_resume_ms / 1000

    @property
    def unchecked_frames(self) -> bool:
        """Channels are TLS and `x-tls-frame-checksums` is off: the AEAD alone guards frames."""
        return bool(self.tls_creds) and not self.tls_frame_checksums

    @property
    def resolve_interval_s(self) -> float:
        """Seconds between two resolve attempts (`x-resolve-interval-ms`)."""
        return self.resolve_interval_ms / 1000

    def updated(self, changes: Mapping[str, object]) -> MigrationParameters:
        """Return a copy with `changes` (QMP names) applied, or raise naming the bad parameter."""
        values: dict[str, object] = {}
        for name, value in changes.items():
            spec = _PARAMETERS.get(name)
            if spec is None:
                raise ParameterError(f"Parameter '{name}' is unexpected")
            attribute, allowed = spec
            values[attribute] = allowed.check(name, value)
        return dataclasses.replace(self, **values)  # type: ignore[arg-type]

    def to_qmp(self) -> dict[str, object]:
        """Return the `query-migrate-parameters` reply."""
        return {name: getattr(self, attribute) for name, (attribute, _) in _PARAMETERS.items()}


# QMP name -> (attribute, default). QEMU's defaults, except return-path (see module docstring).
_CAPABILITIES: Final[dict[str, str]] = {
    "auto-converge": "auto_converge",
    "events": "events",
    "return-path": "return_path",
    "validate-uuid": "validate_uuid",
    "pause-before-switchover": "pause_before_switchover",
    "dirty-limit": "dirty_limit",
    "x-digest-check": "digest_check",
    "multifd": "multifd",
    "xbzrle": "xbzrle",
    "postcopy-ram": "postcopy_ram",
    "postcopy-blocktime": "postcopy_blocktime",
    "postcopy-preempt": "postcopy_preempt",
    POSTCOPY_XBZRLE_CAPABILITY: "postcopy_xbzrle",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MigrationCapabilities:
    """Migration capabilities (QEMU `MigrationCapability`), all off but return-path."""

    auto_converge: bool = False
    events: bool = False
    return_path: bool = True
    validate_uuid: bool = False
    pause_before_switchover: bool = False
    dirty_limit: bool = False
    digest_check: bool = False
    multifd: bool = False
    xbzrle: bool = False
    postcopy_ram: bool = False
    postcopy_blocktime: bool = False
    postcopy_preempt: bool = False
    postcopy_xbzrle: bool = False  # beyond QEMU: the push after the switch as XBZRLE deltas

    def updated(self, changes: Mapping[str, bool]) -> MigrationCapabilities:
        """Return a copy with `changes` (QMP names) applied, or raise naming the capability."""
        values: dict[str, bool] = {}
        for name, state in changes.items():
            attribute = _CAPABILITIES.get(name)
            if attribute is None:
                raise ParameterError(f"Parameter 'capability' does not accept value '{name}'")
            values[attribute] = state
        caps = dataclasses.replace(self, **values)
        if caps.auto_converge and caps.dirty_limit:  # QEMU's migrate_caps_check
            msg = "dirty-limit conflicts with auto-converge: enable one of them"
            raise ParameterError(msg)
        if caps.multifd and caps.xbzrle:  # QEMU's migrate_caps_check
            msg = "Multifd is not compatible with xbzrle"
            raise ParameterError(msg)
        if caps.multifd and caps.postcopy_ram:  # QEMU before 8.x
            msg = "Postcopy is not yet compatible with multifd"
            raise ParameterError(msg)
        if caps.postcopy_preempt and not caps.postcopy_ram:  # QEMU's migrate_caps_check
            msg = "Postcopy preempt requires postcopy-ram"
            raise ParameterError(msg)
        if caps.postcopy_xbzrle and not (caps.postcopy_ram and caps.xbzrle):
            msg = f"{POSTCOPY_XBZRLE_CAPABILITY} requires postcopy-ram and xbzrle"
            raise ParameterError(msg)
        return caps

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
        if self.postcopy_preempt:  # the destination waits for its preempt channel's end
            names.append(PREEMPT_CAPABILITY)
        if self.postcopy_xbzrle:  # the destination applies deltas to pages it lacks
            names.append(POSTCOPY_XBZRLE_CAPABILITY)
        return tuple(names)


def capability_names() -> tuple[str, ...]:
    """All capability names this VMM knows, in `query-migrate-capabilities` order."""
    return tuple(_CAPABILITIES)


def parameter_names() -> tuple[str, ...]:
    """All parameter names this VMM knows, in `query-migrate-parameters` order."""
    return tuple(_PARAMETERS)
