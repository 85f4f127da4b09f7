"""query-migrate replies: QEMU's members, in the statuses QEMU shows them, from the metrics."""

from __future__ import annotations

from migration.info import dest_info, source_info
from migration.ledger import IncomingLedger
from migration.metrics import DowntimeMarks, SourceMetrics, TimeoutAction
from migration.outbox import Outbox
from migration.params import MigrationCapabilities
from migration.status import MigrationStatus
from protocol import DeviceRef, MigrationConfiguration


def _metrics() -> SourceMetrics:
    metrics = SourceMetrics(
        page_size=4096, total_bytes=1 << 30, started_at=10.0, expected_downtime_ms=300
    )
    metrics.setup_done_at = 10.05
    metrics.transferred_bytes = 500_000_000
    metrics.normal_pages = 120_000
    metrics.zero_pages = 2_000
    metrics.remaining_bytes = 40_960
    metrics.dirty_sync_count = 3
    metrics.dirty_pages_rate = 5000.0
    metrics.mbps = 20_000.0
    metrics.expected_downtime_ms = 7
    return metrics


def test_none_is_empty() -> None:
    assert {} == source_info(MigrationStatus.NONE, _metrics(), now=0.0)


def test_setup_shows_only_the_status() -> None:
    info = source_info(MigrationStatus.SETUP, _metrics(), now=10.01)

    assert {"status": "setup"} == info


def test_active_shows_times_and_ram_with_remaining_and_dirty_rate() -> None:
    info = source_info(MigrationStatus.ACTIVE, _metrics(), now=10.5)

    assert "active" == info["status"]
    assert 500 == info["total-time"]
    assert 50 == info["setup-time"]
    assert 7 == info["expected-downtime"]
    assert "downtime" not in info
    ram = info["ram"]
    assert isinstance(ram, dict)
    assert {
        "transferred": 500_000_000,
        "total": 1 << 30,
        "duplicate": 2_000,
        "normal": 120_000,
        "normal-bytes": 120_000 * 4096,
        "dirty-sync-count": 3,
        "page-size": 4096,
        "remaining": 40_960,
        "dirty-pages-rate": 5000,
        "mbps": 20_000.0,
    }.items() <= ram.items()


def test_completed_shows_downtime_and_drops_remaining() -> None:
    metrics = _metrics()
    metrics.downtime = DowntimeMarks(
        stopped_at=11.0,
        final_ram_sent_at=11.010,
        devices_sent_at=11.011,
        loaded_at=11.020,
        resumed_at=11.022,
    )
    metrics.bytes_at_stop = 490_000_000
    metrics.ended_at = 11.022

    info = source_info(MigrationStatus.COMPLETED, metrics, now=99.0)

    assert 22 == info["downtime"]
    assert 1022 == info["total-time"]
    assert "expected-downtime" not in info
    ram = info["ram"]
    assert isinstance(ram, dict)
    assert "remaining" not in ram
    assert "dirty-pages-rate" not in ram
    assert 490_000_000 == ram["precopy-bytes"]
    assert 10_000_000 == ram["downtime-bytes"]
    assert {
        "final-ram": 10,
        "device-state": 1,
        "load-and-check": 9,
        "handover": 2,
    } == info["x-downtime-breakdown"]
    assert 3 == info["x-iterations"]


def test_failed_shows_status_and_error_only() -> None:
    metrics = _metrics()
    metrics.error_desc = "connection to the destination closed"

    info = source_info(MigrationStatus.FAILED, metrics, now=12.0)

    assert {"status": "failed", "error-desc": "connection to the destination closed"} == info


def test_cancelled_has_no_error_unless_one_was_recorded() -> None:
    assert {"status": "cancelled"} == source_info(MigrationStatus.CANCELLED, _metrics(), now=12.0)


def _config(migration_id: str) -> MigrationConfiguration:
    return MigrationConfiguration(
        migration_id=migration_id,
        machine="livemig-virt-1.0",
        page_size=4096,
        ram_size=1 << 20,
        devices=(DeviceRef(idstr="ram", instance_id=0, version_id=4),),
        capabilities=(),
        uuid="11111111-1111-1111-1111-111111111111",
        vm={},
    )


def test_destination_info_follows_its_newest_record() -> None:
    ledger = IncomingLedger()
    out = Outbox(0.0)
    assert {} == dest_info(ledger.current)

    ledger.begin(_config("m1"), from_file=False, busy_reason=None, out=out)
    assert {
        "status": "setup",
        "x-migration-id": "m1",
        "x-vm-uuid": "11111111-1111-1111-1111-111111111111",
    } == dest_info(ledger.current)

    ledger.discard("m1", "bad stream", out, cause="protocol-error")
    assert {"status": "failed", "error-desc": "bad stream"}.items() <= dest_info(
        ledger.current
    ).items()


def test_cpu_throttle_percentage_appears_with_auto_converge_as_in_qemu() -> None:
    metrics = _metrics()
    plain = source_info(MigrationStatus.ACTIVE, metrics, now=10.5)
    assert "cpu-throttle-percentage" not in plain
    auto = MigrationCapabilities(auto_converge=True)
    info = source_info(MigrationStatus.ACTIVE, metrics, now=10.5, caps=auto)
    assert 0 == info["cpu-throttle-percentage"]
    assert "x-throttle-started-at-pass" not in info

    metrics.cpu_throttle_percent = 30
    metrics.throttle_started_at_pass = 4
    info = source_info(MigrationStatus.ACTIVE, metrics, now=10.5, caps=auto)
    assert (30, 4) == (info["cpu-throttle-percentage"], info["x-throttle-started-at-pass"])
    # Turned on by x-timeout-action throttle, without the capability: shown too.
    assert 30 == source_info(MigrationStatus.ACTIVE, metrics, now=10.5)["cpu-throttle-percentage"]
    limit = MigrationCapabilities(dirty_limit=True)
    assert "cpu-throttle-percentage" not in source_info(
        MigrationStatus.ACTIVE, metrics, now=10.5, caps=limit
    )


def test_timeout_actions_are_listed_in_every_status_after_they_acted() -> None:
    metrics = _metrics()
    metrics.timeout_actions.append(
        TimeoutAction(policy="x-progress-timeout", action="cancel", at_ms=150_000)
    )
    metrics.error_desc = "migration ended by policy x-progress-timeout"
    info = source_info(MigrationStatus.FAILED, metrics, now=11.0)
    assert [{"policy": "x-progress-timeout", "action": "cancel", "at-ms": 150_000}] == info[
        "x-timeout-actions"
    ]
    assert info["error-desc"].startswith("migration ended by policy")
