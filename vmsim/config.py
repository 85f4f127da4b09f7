"""The machine configuration: a validated, JSON-able value that fixes everything a VM does.

Together with a tick count it determines the machine's digest (see `Machine.digest`), which is
why every field is checked here, once, with a message that names the key and what is allowed.
"""

from __future__ import annotations

import uuid as uuid_module
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Final, TypeVar

from vmsim.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DEFAULT_MACHINE", "PAGE_SIZE", "Fill", "MachineConfig", "WorkloadKind"]

PAGE_SIZE: Final = 4096
"""Bytes per guest page (TARGET_PAGE_SIZE)."""

DEFAULT_MACHINE: Final = "livemig-virt-1.0"
_MIB: Final = 1024 * 1024
_U64_MAX: Final = (1 << 64) - 1
_MACHINE_MAX_CHARS: Final = 64
_E = TypeVar("_E", bound=StrEnum)


class Fill(StrEnum):
    """Initial contents of guest RAM at boot.

    `image` and `mixed` are real bytes read by the daemon (vmsim does no I/O) and handed to
    `Machine.boot`; the configuration names their digest, so a replay that is given other
    bytes refuses to boot instead of disagreeing later.
    """

    ZERO = "zero"
    RANDOM = "random"
    PATTERN = "pattern"
    IMAGE = "image"  # a file or directory tree (fill_source), zero-padded to the RAM size
    MIXED = "mixed"  # the preset: files every Debian machine has, and a share of zero pages


CONTENT_FILLS: Final = frozenset({Fill.IMAGE, Fill.MIXED})
_DIGEST_HEX_CHARS: Final = 32
_SOURCE_MAX_CHARS: Final = 4096


class WorkloadKind(StrEnum):
    """What the vCPUs write while the VM runs."""

    AB = "ab"
    RANDOM = "random"
    HOTSET = "hotset"
    IDLE = "idle"


# key -> (lowest, highest) for the integer fields; checked in declaration order.
_INT_RANGES: Final[Mapping[str, tuple[int, int]]] = {
    "ram_mib": (4, 65536),
    "dirty_rate": (0, 100_000_000),
    "tick_hz": (1, 1_000_000),
    "hot_mib": (1, 65536),
    "hot_percent": (0, 100),
    "seed": (0, _U64_MAX),
    "vcpus": (1, 8),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MachineConfig:
    """Everything that defines a simulated machine.

    Attributes:
        machine: the machine type name (QEMU's `-machine`); both sides of a migration must agree.
        ram_mib: guest RAM in MiB (4 .. 65536).
        fill: initial RAM contents.
        workload: what the vCPUs write.
        dirty_rate: guest page writes per second (pages/s), i.e. tick_hz x pages per tick; a
            fractional number of writes per tick is accumulated exactly in integers.
        tick_hz: guest ticks per second of real time (the daemon paces; vmsim counts ticks).
        working_set_mib: the region the workload writes (the ab sweep range, the random and
            hotset spread); None means all usable RAM. Clamped to usable RAM.
        hot_mib: size of the hot set of the hotset workload (clamped to the working set).
        hot_percent: share of hotset writes that go to the hot set.
        seed: the u64 every pseudo-random choice derives from.
        vcpus: number of vCPUs (1 .. 8); each gets its own partition of the working set.
        uuid: the VM's UUID (canonical form) or None.
        fill_source: where an `image` fill's bytes come from (a path), else None.
        fill_digest: xxh3-128 (hex) of an `image` or `mixed` fill's bytes, else None.
    """

    machine: str = DEFAULT_MACHINE
    ram_mib: int = 256
    fill: Fill = Fill.RANDOM
    workload: WorkloadKind = WorkloadKind.RANDOM
    dirty_rate: int = 20_000
    tick_hz: int = 1000
    working_set_mib: int | None = None
    hot_mib: int = 16
    hot_percent: int = 90
    seed: int = 0
    vcpus: int = 1
    uuid: str | None = None
    fill_source: str | None = None
    fill_digest: str | None = None

    def __post_init__(self) -> None:
        _check_machine(self.machine)
        for key, (lowest, highest) in _INT_RANGES.items():
            _check_int(key, getattr(self, key), lowest, highest)
        _check_enum("fill", self.fill, Fill)
        _check_enum("workload", self.workload, WorkloadKind)
        if self.working_set_mib is not None:
            _check_int("working_set_mib", self.working_set_mib, 1, self.ram_mib)
        if self.uuid is not None:
            _check_uuid(self.uuid)
        _check_fill_content(self.fill, self.fill_source, self.fill_digest)

    @property
    def ram_bytes(self) -> int:
        """Guest RAM size in bytes."""
        return self.ram_mib * _MIB

    @property
    def n_pages(self) -> int:
        """Guest RAM size in pages."""
        return self.ram_bytes // PAGE_SIZE

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> MachineConfig:
        """Build a config from plain values (e.g. parsed JSON), refusing unknown keys.

        Args:
            data: a mapping of field names to values; absent keys take their defaults.
                Enumerations are given by their string values, as `to_dict` writes them.

        Returns:
            The validated configuration.

        Raises:
            ConfigError: a key is unknown, or a value has the wrong type or is out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
        values = dict(data)
        for key, enum_type in (("fill", Fill), ("workload", WorkloadKind)):
            if key in values:
                values[key] = _parse_enum(key, values[key], enum_type)
        return cls(**values)  # type: ignore[arg-type]  # every value is checked in __post_init__

    def to_dict(self) -> dict[str, object]:
        """Return the configuration as JSON-able plain values (accepted by `from_dict`)."""
        result: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        result["fill"] = str(self.fill)
        result["workload"] = str(self.workload)
        return result


def _check_fill_content(fill: Fill, source: object, digest: object) -> None:
    if fill not in CONTENT_FILLS:
        if source is not None or digest is not None:
            raise ConfigError(
                f"fill_source and fill_digest are for image and mixed fills, not {fill}"
            )
        return
    if not isinstance(digest, str) or len(digest) != _DIGEST_HEX_CHARS or not _is_hex(digest):
        raise ConfigError(
            f"fill_digest: a {fill} fill needs the xxh3-128 hex digest of its bytes, got {digest!r}"
        )
    if fill is Fill.IMAGE:
        if not isinstance(source, str) or not source or len(source) > _SOURCE_MAX_CHARS:
            raise ConfigError(
                f"fill_source: an image fill needs the path it was read from, got {source!r}"
            )
    elif source is not None:
        raise ConfigError("fill_source: the mixed fill names no source (it is a preset)")


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdef" for char in text)


def _check_machine(value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > _MACHINE_MAX_CHARS:
        raise ConfigError(
            f"machine: expected a non-empty string of at most {_MACHINE_MAX_CHARS} characters,"
            f" got {value!r}"
        )


def _check_int(key: str, value: object, lowest: int, highest: int) -> None:
    # bool is an int subclass; a JSON `true` must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise ConfigError(f"{key}: expected an integer in {lowest}..{highest}, got {value!r}")


def _allowed(enum_type: type[StrEnum]) -> str:
    return ", ".join(repr(str(member)) for member in enum_type)


def _check_enum(key: str, value: object, enum_type: type[StrEnum]) -> None:
    if not isinstance(value, enum_type):
        raise ConfigError(f"{key}: expected one of {_allowed(enum_type)}, got {value!r}")


def _parse_enum(key: str, value: object, enum_type: type[_E]) -> _E:
    if isinstance(value, str):
        try:
            return enum_type(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected one of {_allowed(enum_type)}, got {value!r}")


def _check_uuid(value: object) -> None:
    try:
        canonical = str(uuid_module.UUID(str(value)))
    except ValueError:
        canonical = None
    if not isinstance(value, str) or canonical != value.lower():
        raise ConfigError(
            f"uuid: expected a UUID such as '{uuid_module.UUID(int=0)}', got {value!r}"
        )
