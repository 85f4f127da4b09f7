"""The timeout policies: completion per GiB, progress, their deadlines, each acting once."""

from __future__ import annotations

from migration.metrics import SourceMetrics
from migration.params import MigrationParameters
from migration.timeouts import COMPLETION, PROGRESS, Expired, TimeoutPolicy

GIB = 1 << 30


def metrics(*, total_bytes: int = 2 * GIB, remaining: int = GIB, syncs: int = 1) -> SourceMetrics:
    m = SourceMetrics(page_size=4096, total_bytes=total_bytes, started_at=0.0)
    m.remaining_bytes = remaining
    m.dirty_sync_count = syncs
    return m


def test_both_off_by_default_never_expire():
    policy = TimeoutPolicy(started_at=0.0)
    params = MigrationParameters()
    assert policy.check(1e6, params, metrics()) is None
    assert policy.next_deadline(params, 2 * GIB) is None


def test_completion_allows_seconds_per_gib_of_guest_ram():
    policy = TimeoutPolicy(started_at=10.0)
    params = MigrationParameters(completion_timeout_per_gib_s=150)  # KubeVirt's default
    m = metrics(total_bytes=2 * GIB)
    assert 310.0 == policy.next_deadline(params, m.total_bytes)
    assert policy.check(309.9, params, m) is None
    expired = policy.check(310.0, params, m)
    assert Expired(COMPLETION, "150 s per GiB of 2 GiB allows 300.0 s", "cancel") == expired
    assert policy.check(400.0, params, m) is None  # it acts once
    assert policy.next_deadline(params, m.total_bytes) is None


def test_progress_is_a_new_pass_or_remaining_bytes_lower_than_ever():
    policy = TimeoutPolicy(started_at=0.0)
    params = MigrationParameters(progress_timeout_s=10, timeout_action="throttle")
    assert policy.check(5.0, params, metrics(remaining=GIB, syncs=1)) is None  # lowest so far
    assert 15.0 == policy.next_deadline(params, GIB)
    assert policy.check(9.0, params, metrics(remaining=GIB + 1, syncs=1)) is None  # no progress
    assert policy.check(14.0, params, metrics(remaining=GIB - 1, syncs=1)) is None  # lower
    assert policy.check(23.0, params, metrics(remaining=GIB, syncs=2)) is None  # a new pass
    assert 33.0 == policy.next_deadline(params, GIB)
    expired = policy.check(33.0, params, metrics(remaining=GIB, syncs=2))
    assert expired is not None
    assert (PROGRESS, "throttle") == (expired.policy, expired.action)
    assert "10 s" in expired.detail


def test_a_policy_turned_on_late_counts_from_the_start():
    policy = TimeoutPolicy(started_at=0.0)
    m = metrics(total_bytes=GIB)
    assert policy.check(50.0, MigrationParameters(), m) is None
    expired = policy.check(51.0, MigrationParameters(completion_timeout_per_gib_s=30), m)
    assert expired is not None
    assert COMPLETION == expired.policy
