"""query-migrate replies: QEMU's members, in the statuses QEMU shows them."""

from __future__ import annotations

from vmm.precopy import ConvergencePolicy, DirtyRateMeter, WindowSample
from vmm.stats import DowntimeMarks, OutgoingStats, incoming_info, outgoing_info
from vmm.status import MigrationStatus


def _stats() -> OutgoingStats:
    stats = OutgoingStats(page_size=4096, total_bytes=1 << 30, started_at=10.0)
    stats.setup_done_at = 10.05
    stats.transferred_bytes = 500_000_000
    stats.normal_pages = 120_000
    stats.zero_pages = 2_000
    stats.remaining_bytes = 40_960
    stats.dirty_sync_count = 3
    return stats


def _policy() -> ConvergencePolicy:
    policy = ConvergencePolicy(now=10.0, downtime_limit_ms=300)
    policy.update(
        WindowSample(
            now=10.1,
            transferred_bytes=250_000_000,
            transferred_pages=61_000,
            dirty_bytes_last_sync=40_960,
            dirty_pages_rate=5000,
        )
    )
    return policy


def test_none_is_empty() -> None:
    assert {} == outgoing_info(MigrationStatus.NONE, None, now=0.0, policy=None, dirty_rate=None)


def test_setup_shows_only_the_status() -> None:
    info = outgoing_info(MigrationStatus.SETUP, _stats(), now=10.01, policy=None, dirty_rate=None)

    assert {"status": "setup"} == info


def test_active_shows_times_and_ram_with_remaining_and_dirty_rate() -> None:
    meter = DirtyRateMeter(now=10.0)
    meter.record_sync(now=11.0, dirtied_pages=5000)

    info = outgoing_info(
        MigrationStatus.ACTIVE, _stats(), now=10.5, policy=_policy(), dirty_rate=meter
    )

    assert "active" == info["status"]
    assert 500 == info["total-time"]
    assert 50 == info["setup-time"]
    assert "expected-downtime" in info
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
    }.items() <= ram.items()
    assert ram["mbps"] == 20_000.0


def test_completed_shows_downtime_and_drops_remaining() -> None:
    stats = _stats()
    stats.downtime = DowntimeMarks(
        stopped_at=11.0,
        final_ram_sent_at=11.010,
        devices_sent_at=11.011,
        loaded_at=11.020,
        resumed_at=11.022,
    )
    stats.bytes_at_stop = 490_000_000
    stats.ended_at = 11.022

    info = outgoing_info(
        MigrationStatus.COMPLETED, stats, now=99.0, policy=_policy(), dirty_rate=None
    )

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


def test_failed_shows_status_and_error_only() -> None:
    stats = _stats()
    stats.error_desc = "connection to the destination closed"

    info = outgoing_info(MigrationStatus.FAILED, stats, now=12.0, policy=_policy(), dirty_rate=None)

    assert {"status": "failed", "error-desc": "connection to the destination closed"} == info


def test_incoming_info() -> None:
    assert {} == incoming_info(MigrationStatus.NONE, None)
    assert {"status": "active"} == incoming_info(MigrationStatus.ACTIVE, "ignored")
    assert {"status": "failed", "error-desc": "bad stream"} == incoming_info(
        MigrationStatus.FAILED, "bad stream"
    )
