"""The CONFIGURATION frame: what the source announces before any section (docs/protocol.md 1.4)."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from protocol.codes import MAX_MULTIFD_CHANNELS
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.meta import (
    U32_MAX,
    bad,
    check_keys,
    take_int,
    take_map,
    take_str,
    take_u32,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from protocol.limits import Limits
    from protocol.meta import MetaMap

MAX_NAME_BYTES: Final = 64
MAX_IDSTR_BYTES: Final = 256
MIN_PAGE_SIZE: Final = 1024
MAX_PAGE_SIZE: Final = 65536
DEVICE_REF_FIELDS: Final = 3
CONFIG_KEYS: Final = (
    "migration_id",
    "machine",
    "page_size",
    "ram_size",
    "devices",
    "capabilities",
    "uuid",
    "vm",
)
MULTIFD_KEY: Final = "multifd_channels"
"""Present only when the migration uses multifd channels (an older peer never sees it)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceRef:
    """A SaveStateEntry named in the configuration: ``[idstr, instance_id, version_id]``."""

    idstr: str
    instance_id: int
    version_id: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MigrationConfiguration:
    """The configuration a migration stream starts with.

    Attributes:
        migration_id: non-empty, at most 64 UTF-8 bytes.
        machine: the machine type, e.g. ``livemig-virt-1.0``.
        page_size: a power of two, 1 KiB to 64 KiB.
        ram_size: guest RAM bytes: > 0, a multiple of ``page_size``.
        devices: the SaveStateEntries of the VM, no (idstr, instance_id) twice.
        capabilities: capabilities in use that both sides must agree on.
        uuid: the VM's UUID (canonical lower-case form) or None.
        vm: the VM's configuration, opaque to the protocol.
        multifd_channels: how many multifd channels carry the pages (0: the main stream does).
    """

    migration_id: str
    machine: str
    page_size: int
    ram_size: int
    devices: tuple[DeviceRef, ...]
    capabilities: tuple[str, ...]
    uuid: str | None
    vm: Mapping[str, Any]
    multifd_channels: int = 0

    @property
    def ram_pages(self) -> int:
        """Guest RAM in pages."""
        return self.ram_size // self.page_size


def encode_configuration(config: MigrationConfiguration) -> MetaMap:
    """The CONFIGURATION metadata map."""
    meta: MetaMap = {
        "migration_id": config.migration_id,
        "machine": config.machine,
        "page_size": config.page_size,
        "ram_size": config.ram_size,
        "devices": [[d.idstr, d.instance_id, d.version_id] for d in config.devices],
        "capabilities": list(config.capabilities),
        "uuid": config.uuid,
        "vm": dict(config.vm),
    }
    if config.multifd_channels:
        meta[MULTIFD_KEY] = config.multifd_channels
    return meta


def decode_configuration(meta: MetaMap, limits: Limits) -> MigrationConfiguration:
    """Check a CONFIGURATION metadata map.

    Raises:
        LocalProtocolError: BAD_METADATA or LIMIT_EXCEEDED naming the field.
    """
    multifd = MULTIFD_KEY in meta
    check_keys(meta, (*CONFIG_KEYS, MULTIFD_KEY) if multifd else CONFIG_KEYS, "CONFIGURATION")
    page_size = take_int(meta, "page_size", MIN_PAGE_SIZE, MAX_PAGE_SIZE)
    if page_size & (page_size - 1):
        msg = f"'page_size' = {page_size} is not a power of two"
        raise bad(msg)
    ram_size = take_int(meta, "ram_size", 1, 1 << 64)
    if ram_size > limits.max_ram_bytes:
        msg = f"'ram_size' = {ram_size} exceeds max_ram_bytes({limits.max_ram_bytes})"
        raise LocalProtocolError(msg, code=ErrorCode.LIMIT_EXCEEDED)
    if ram_size % page_size or ram_size // page_size > U32_MAX + 1:
        msg = f"'ram_size' = {ram_size} is not a multiple of page_size {page_size} (u32 pfns)"
        raise bad(msg)
    return MigrationConfiguration(
        migration_id=take_str(meta, "migration_id", max_bytes=MAX_NAME_BYTES),
        machine=take_str(meta, "machine", max_bytes=MAX_NAME_BYTES),
        page_size=page_size,
        ram_size=ram_size,
        devices=_decode_devices(meta["devices"], limits),
        capabilities=_decode_capabilities(meta["capabilities"]),
        uuid=_decode_uuid(meta["uuid"]),
        vm=take_map(meta, "vm"),
        multifd_channels=take_int(meta, MULTIFD_KEY, 1, MAX_MULTIFD_CHANNELS) if multifd else 0,
    )


def decode_device_ref(entry: object) -> DeviceRef:
    """One ``[idstr, instance_id, version_id]`` entry."""
    if not isinstance(entry, list) or len(entry) != DEVICE_REF_FIELDS:
        msg = f"device entry must be [idstr, instance_id, version_id], not {entry!r:.80}"
        raise bad(msg)
    fields = dict(zip(("idstr", "instance_id", "version_id"), entry, strict=True))
    return DeviceRef(
        idstr=take_str(fields, "idstr", max_bytes=MAX_IDSTR_BYTES),
        instance_id=take_u32(fields, "instance_id"),
        version_id=take_u32(fields, "version_id"),
    )


def _decode_devices(value: object, limits: Limits) -> tuple[DeviceRef, ...]:
    if not isinstance(value, list):
        msg = f"'devices' must be an array, not {type(value).__name__}"
        raise bad(msg)
    if len(value) > limits.max_config_devices:
        msg = f"{len(value)} devices exceeds max_config_devices({limits.max_config_devices})"
        raise LocalProtocolError(msg, code=ErrorCode.LIMIT_EXCEEDED)
    devices = tuple(decode_device_ref(entry) for entry in value)
    if len({(d.idstr, d.instance_id) for d in devices}) != len(devices):
        msg = "'devices' lists an (idstr, instance_id) twice"
        raise bad(msg)
    return devices


def _decode_capabilities(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        msg = f"'capabilities' must be an array, not {type(value).__name__}"
        raise bad(msg)
    names = tuple(
        take_str({"capability": name}, "capability", max_bytes=MAX_NAME_BYTES) for name in value
    )
    if len(set(names)) != len(names):
        msg = "'capabilities' lists a capability twice"
        raise bad(msg)
    return names


def _decode_uuid(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            canonical = str(uuidlib.UUID(value))
        except ValueError:
            canonical = None
        if canonical == value:
            return value
    msg = f"'uuid' must be nil or a canonical lower-case UUID string, not {value!r:.80}"
    raise bad(msg)
