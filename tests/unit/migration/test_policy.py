"""The convergence policy and the rate limiter, driven by a manual clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from migration.policy import ConvergencePolicy, DirtyRateMeter, RateLimiter, WindowSample


def _sample(now: float, sent: int, dirty: int = 0, rate: float = 0.0) -> WindowSample:
    return WindowSample(
        now=now,
        transferred_bytes=sent,
        transferred_pages=sent // 4096,
        dirty_bytes_last_sync=dirty,
        dirty_pages_rate=rate,
    )


def test_window_shorter_than_100_ms_changes_nothing() -> None:
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=300)

    assert not policy.update(_sample(0.099, 10_000_000))
    assert 0 == policy.threshold_bytes


def test_threshold_is_bandwidth_times_downtime_limit() -> None:
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=300)

    assert policy.update(_sample(0.1, 100_000_000))  # 1 GB/s = 1e6 bytes/ms

    assert 300_000_000 == policy.threshold_bytes
    assert 8000.0 == round(policy.mbps)


def test_avail_switchover_bandwidth_overrides_the_estimate() -> None:
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=100)
    policy.avail_switchover_bandwidth_bytes_per_s = 2_000_000_000

    policy.update(_sample(0.1, 1000))

    assert 200_000_000 == policy.threshold_bytes


def test_exact_count_only_below_threshold_and_switchover_at_or_under() -> None:
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=300)
    policy.first_pass_done()
    policy.update(_sample(0.1, 100_000))  # 1e3 bytes/ms -> threshold 300_000

    assert not policy.needs_exact(300_001)
    assert policy.needs_exact(300_000)
    assert policy.can_switchover(300_000)
    assert not policy.can_switchover(300_001)


def test_no_switchover_before_the_first_pass_is_done() -> None:
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=300)
    policy.update(_sample(0.1, 100_000_000))

    assert not policy.can_switchover(0)


def test_pending_pages_wait_for_a_window_measured_after_the_first_pass() -> None:
    """First-pass windows (long runs) overestimate the rate of scattered re-dirtied pages."""
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=300)
    policy.update(_sample(0.1, 100_000_000))  # first pass: 1e6 bytes/ms
    policy.first_pass_done()

    assert policy.can_switchover(0)  # nothing to send: the bandwidth does not matter
    assert not policy.can_switchover(1)

    policy.update(_sample(0.2, 150_000_000))  # re-dirtied pages: 5e5 bytes/ms, slower
    assert 150_000_000 == policy.threshold_bytes  # planned with the slower window
    assert policy.can_switchover(150_000_000)


def test_the_operators_switchover_bandwidth_needs_no_window_after_the_first_pass() -> None:
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=100)
    policy.avail_switchover_bandwidth_bytes_per_s = 2_000_000_000
    policy.update(_sample(0.1, 1000))
    policy.first_pass_done()

    assert policy.can_switchover(200_000_000)


def test_an_empty_estimate_is_checked_before_any_window_closed() -> None:
    """Estimate 0 and threshold 0: only an exact count can tell whether anything is dirty."""
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=300)

    assert policy.needs_exact(0)


def test_expected_downtime_is_dirty_bytes_over_bandwidth() -> None:
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=300)

    policy.update(_sample(0.1, 100_000_000, dirty=50_000_000, rate=100.0))

    assert 50 == policy.expected_downtime_ms


def test_expected_downtime_starts_at_the_limit() -> None:
    assert 300 == ConvergencePolicy(now=0.0, downtime_limit_ms=300).expected_downtime_ms


def test_dirty_rate_updates_once_a_second() -> None:
    meter = DirtyRateMeter(now=0.0)
    meter.record_sync(now=0.5, dirtied_pages=500)
    assert 0.0 == meter.pages_per_second

    meter.record_sync(now=1.0, dirtied_pages=500)

    assert 1000.0 == meter.pages_per_second


def test_unlimited_rate_has_no_allowance() -> None:
    assert RateLimiter(now=0.0).allowance_bytes(now=5.0, limit_bytes_per_s=0) is None


def test_allowance_is_a_tenth_of_the_limit_per_slot() -> None:
    limiter = RateLimiter(now=0.0)

    assert 300_000 == limiter.allowance_bytes(now=0.0, limit_bytes_per_s=3_000_000)
    limiter.consume(200_000)
    assert 100_000 == limiter.allowance_bytes(now=0.05, limit_bytes_per_s=3_000_000)
    assert 300_000 == limiter.allowance_bytes(now=0.1, limit_bytes_per_s=3_000_000)


@given(
    limit=st.integers(min_value=1000, max_value=10**9),
    batch=st.integers(min_value=1, max_value=8 * 1024 * 1024),
)
def test_rate_holds_within_ten_percent_over_any_second(limit: int, batch: int) -> None:
    """A sender that queues whatever the limiter allows, in batches that may overshoot a slot,
    never exceeds the limit by more than 10% over any one-second window (after the first)."""
    limiter = RateLimiter(now=0.0)
    sends: list[tuple[float, int]] = []
    now = 0.0
    while now < 12.0:
        allowance = limiter.allowance_bytes(now=now, limit_bytes_per_s=limit)
        assert allowance is not None
        if allowance > 0:
            size = min(batch, max(allowance, 1))
            limiter.consume(size)
            sends.append((now, size))
        else:
            now = limiter.slot_ends_at()
            continue
        now += 0.001
    for start in (x / 4 for x in range(4, 40)):
        window = sum(size for at, size in sends if start <= at < start + 1.0)
        assert window <= limit * 1.1 + 4096, (start, window, limit)


def test_switchover_is_planned_with_the_slowest_recent_window() -> None:
    """One fast window must not promise a stop-and-copy the link cannot deliver."""
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=100)
    policy.update(_sample(0.1, 100_000))  # 1e3 bytes/ms
    policy.update(_sample(0.2, 100_000 + 500_000))  # 5e3 bytes/ms

    assert 100_000 == policy.threshold_bytes


def test_idle_windows_do_not_lower_the_estimate() -> None:
    policy = ConvergencePolicy(now=0.0, downtime_limit_ms=100)
    policy.update(_sample(0.1, 100_000))
    policy.update(_sample(0.2, 100_000))  # nothing sent: nothing pending, not a slow link

    assert 100_000 == policy.threshold_bytes
