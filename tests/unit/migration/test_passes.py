"""The pass log: one sample per dirty sync, bounded by thinning, the newest always shown."""

from __future__ import annotations

import itertools

import pytest

from migration.passes import PassLog, PassSample


def sample(sync: int) -> PassSample:
    return PassSample(
        sync=sync,
        at_ms=sync * 10,
        remaining_bytes=1000 - sync,
        dirtied_pages=sync,
        transferred_bytes=sync * 100,
        dirty_pages_rate=12.6,
        mbps=800.1234,
        cpu_throttle_percent=20,
        dirty_limit_mb_per_s=None,
    )


def test_every_sync_is_kept_below_the_capacity():
    log = PassLog(capacity=8)
    for sync in range(1, 6):
        log.append(sample(sync))
    assert [row["pass"] for row in log.to_json()] == [1, 2, 3, 4, 5]
    assert 1 == log.stride


def test_a_full_log_thins_to_every_other_sync_and_keeps_the_whole_span():
    log = PassLog(capacity=8)
    for sync in range(1, 101):
        log.append(sample(sync))
        assert len(log.rows) <= 8
    kept = [row["pass"] for row in log.to_json()]
    assert 1 == kept[0]
    assert 100 == kept[-1]  # the newest sync is always shown
    strides = {b - a for a, b in itertools.pairwise(kept[:-1])}
    assert {log.stride} == strides
    assert 16 == log.stride


def test_the_json_row_uses_qmp_style_names():
    assert {
        "pass": 3,
        "at-ms": 30,
        "remaining": 997,
        "dirtied-pages": 3,
        "transferred": 300,
        "dirty-pages-rate": 13,
        "mbps": 800.123,
        "cpu-throttle-percentage": 20,
        "dirty-limit": None,
    } == sample(3).to_json()


def test_a_log_needs_room_for_two_rows():
    with pytest.raises(ValueError, match="at least 2 rows"):
        PassLog(capacity=1)
