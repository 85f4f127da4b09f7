"""Configuration glue: what the destination checks before building the machine."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from migration.errors import LoadError
from migration.glue import configuration_for, machine_config_from
from vmsim import Machine, MachineConfig

if TYPE_CHECKING:
    from protocol import MigrationConfiguration

VM_1 = "11111111-1111-1111-1111-111111111111"
VM_2 = "22222222-2222-2222-2222-222222222222"


@pytest.fixture(scope="module")
def configuration() -> MigrationConfiguration:
    machine = Machine.boot(MachineConfig(ram_mib=4, uuid=VM_1))
    return configuration_for(machine, migration_id="m1", capabilities=("validate-uuid",))


def test_round_trip(configuration: MigrationConfiguration) -> None:
    config = machine_config_from(configuration, expected_uuid=VM_1)

    assert MachineConfig(ram_mib=4, uuid=VM_1) == config
    assert ("ram", 0, 4) in {(d.idstr, d.instance_id, d.version_id) for d in configuration.devices}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"machine": "pc-q35-9.0"}, "Machine type received is 'pc-q35-9.0' and local is"),
        ({"page_size": 8192}, "Received page size 8192"),
        ({"ram_size": 8 << 20}, "does not match the VM configuration"),
        ({"vm": {"ram_mib": -1}}, "invalid VM configuration in the stream"),
        (
            {"capabilities": ("validate-uuid", "x-mapped-ram")},
            "the source needs capabilities this destination lacks: x-mapped-ram \\(it follows",
        ),
    ],
)
def test_mismatches_are_named(
    configuration: MigrationConfiguration, change: dict[str, object], message: str
) -> None:
    with pytest.raises(LoadError, match=message):
        machine_config_from(dataclasses.replace(configuration, **change), expected_uuid=None)


def test_uuid_checked_only_under_validate_uuid(configuration: MigrationConfiguration) -> None:
    with pytest.raises(LoadError, match=r"UUID received is 1111.* and local is 2222"):
        machine_config_from(configuration, expected_uuid=VM_2)

    unvalidated = dataclasses.replace(configuration, capabilities=())
    assert machine_config_from(unvalidated, expected_uuid=VM_2).uuid == VM_1
