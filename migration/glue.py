"""Translation between the machine (vmsim) and the wire (protocol), in both directions.

The two packages do not know each other (docs/architecture.md); the daemon core maps a machine's
identity and device list to the stream's configuration, and a received configuration back to the
machine to build, checking what QEMU checks (machine type, page size, UUID).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration.errors import LoadError
from migration.params import POSTCOPY_XBZRLE_CAPABILITY, PREEMPT_CAPABILITY
from migration.precopy_resume import PRECOPY_RESUME_CAPABILITY
from protocol import (
    DeviceRef,
    DeviceStateReceived,
    ErrorCode,
    MigrationConfiguration,
    SectionStarted,
)
from vmsim import PAGE_SIZE, ConfigError, MachineConfig, SectionFull, SectionStart

if TYPE_CHECKING:
    from vmsim import Machine

MACHINE_TYPE = MachineConfig().machine
VALIDATE_UUID = "validate-uuid"
DIGEST_CHECK = "x-digest-check"
WIRE_CAPABILITIES = frozenset(
    {
        VALIDATE_UUID,
        DIGEST_CHECK,
        PREEMPT_CAPABILITY,
        PRECOPY_RESUME_CAPABILITY,
        POSTCOPY_XBZRLE_CAPABILITY,
    }
)
"""What a configuration may ask of this destination: it follows each (protocol.md 1.4)."""


def configuration_for(
    machine: Machine,
    *,
    migration_id: str,
    capabilities: tuple[str, ...],
    multifd_channels: int = 0,
) -> MigrationConfiguration:
    """The CONFIGURATION frame describing `machine` (and the multifd channels that follow)."""
    config = machine.config
    return MigrationConfiguration(
        migration_id=migration_id,
        machine=config.machine,
        page_size=PAGE_SIZE,
        ram_size=config.ram_bytes,
        devices=tuple(
            DeviceRef(idstr=idstr, instance_id=instance_id, version_id=version_id)
            for idstr, instance_id, version_id in machine.savevm.device_refs()
        ),
        capabilities=capabilities,
        uuid=config.uuid,
        vm=config.to_dict(),
        multifd_channels=multifd_channels,
    )


def machine_config_from(
    configuration: MigrationConfiguration,
    *,
    expected_uuid: str | None,
) -> MachineConfig:
    """The machine a received configuration describes, or a CONFIG_MISMATCH load error.

    As in QEMU, the UUID is checked only when the source asked for it (`validate-uuid`) and the
    destination knows which VM it expects; a destination without one accepts any.

    Raises:
        LoadError: CONFIG_MISMATCH: the machine type, page size, RAM size or UUID differ, the VM
            configuration is invalid, or the source needs a capability this destination lacks
            (refused at setup rather than failing mid-stream, when the VM may depend on it).
    """
    unknown = sorted(set(configuration.capabilities) - WIRE_CAPABILITIES)
    if unknown:
        known = ", ".join(sorted(WIRE_CAPABILITIES))
        msg = f"the source needs capabilities this destination lacks: {', '.join(unknown)}"
        raise _mismatch(f"{msg} (it follows {known})")
    if configuration.machine != MACHINE_TYPE:
        raise _mismatch(
            f"Machine type received is '{configuration.machine}' and local is '{MACHINE_TYPE}'"
        )
    if configuration.page_size != PAGE_SIZE:
        raise _mismatch(
            f"Received page size {configuration.page_size} but the local page size is {PAGE_SIZE}"
        )
    validate_uuid = VALIDATE_UUID in configuration.capabilities
    if validate_uuid and expected_uuid is not None and configuration.uuid != expected_uuid:
        raise _mismatch(f"UUID received is {configuration.uuid} and local is {expected_uuid}")
    try:
        config = MachineConfig.from_dict(configuration.vm)
    except ConfigError as exc:
        raise _mismatch(f"invalid VM configuration in the stream: {exc}") from exc
    if config.ram_bytes != configuration.ram_size:
        raise _mismatch(
            f"RAM size {configuration.ram_size} does not match the VM configuration's "
            f"{config.ram_bytes}"
        )
    return config


def _mismatch(message: str) -> LoadError:
    return LoadError(message, ErrorCode.CONFIG_MISMATCH)


def start_record(event: SectionStarted) -> SectionStart:
    """The machine's START record of a received SECTION_START."""
    return SectionStart(
        section_id=event.section_id,
        idstr=event.idstr,
        instance_id=event.instance_id,
        version_id=event.version_id,
        setup=dict(event.setup),
    )


def full_record(event: DeviceStateReceived) -> SectionFull:
    """The machine's FULL record of a received SECTION_FULL."""
    return SectionFull(
        section_id=event.section_id,
        idstr=event.idstr,
        instance_id=event.instance_id,
        version_id=event.version_id,
        state=dict(event.state),
    )
