"""Precopy rounds: a throttle period closes on time, not at the end of the pass that spans it."""

from __future__ import annotations

import pytest

from migration.metrics import SourceMetrics
from migration.params import MigrationCapabilities, MigrationParameters
from migration.precopy import Batch, Precopy
from vmsim import PAGE_SIZE, Machine, MachineConfig, state_setup

PARAMS = MigrationParameters()


def precopy_mid_pass(caps: MigrationCapabilities) -> tuple[Machine, Precopy]:
    """A 64 MiB guest whose pass 2 has begun: one batch of its dirty pages sent at t=0.5 s."""
    machine = Machine.boot(MachineConfig(ram_mib=64))
    state_setup(machine.savevm)
    metrics = SourceMetrics(
        page_size=PAGE_SIZE,
        total_bytes=machine.config.ram_bytes,
        started_at=0.0,
        expected_downtime_ms=PARAMS.downtime_limit_ms,
    )
    precopy = Precopy(machine=machine, metrics=metrics, caps=caps, now=0.0)
    assert precopy.start_round(0.5, PARAMS) is None
    step = precopy.next_step(0.5, PARAMS)
    assert isinstance(step, Batch)  # the bulk pass has pages left
    precopy.new_syncs(0.5, PARAMS)
    return machine, precopy


@pytest.mark.parametrize(
    ("caps", "synced"),
    [
        (MigrationCapabilities(), False),
        (MigrationCapabilities(auto_converge=True), True),
        (MigrationCapabilities(dirty_limit=True), True),
    ],
)
def test_a_due_throttle_period_forces_a_sync_mid_pass(
    caps: MigrationCapabilities, synced: bool
) -> None:
    machine, precopy = precopy_mid_pass(caps)
    syncs_before = machine.ram_handler.stats().dirty_sync_count

    precopy.start_round(0.9, PARAMS)  # the period (1 s) is not over: no sync
    assert syncs_before == machine.ram_handler.stats().dirty_sync_count

    precopy.start_round(1.01, PARAMS)
    assert synced == (machine.ram_handler.stats().dirty_sync_count == syncs_before + 1)
    if synced:
        assert [syncs_before + 1] == precopy.new_syncs(1.01, PARAMS).syncs
        assert not precopy.throttle.period_due(1.01, PARAMS)  # that sync closed the period
