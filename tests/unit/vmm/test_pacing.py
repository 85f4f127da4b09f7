"""The vCPU pacer: real-time ticks, auto-converge's run share, dirty limits, lost work."""

from __future__ import annotations

import pytest

from vmm.pacing import DIRTY_RING_ENTRIES, Pacer, VcpuLimit, pages_per_s

HZ = 1000
WRITES_PER_S = 256_000  # 256 page writes per tick: 1000 MiB/s of dirtying per vCPU


def _running(*, vcpus: int = 1, writes_per_s: int = WRITES_PER_S) -> Pacer:
    pacer = Pacer(tick_hz=HZ, writes_per_s=[writes_per_s] * vcpus, now=0.0, ticks=0)
    pacer.started(now=0.0, ticks=0)
    return pacer


def _run_for(
    pacer: Pacer, *, start_s: float, end_s: float, ticks: int, step_s: float = 0.01
) -> int:
    """Execute every due tick at each step from start_s to end_s; the tick count after."""
    steps = round((end_s - start_s) / step_s)
    for i in range(1, steps + 1):
        ticks += max(0, pacer.due_ticks(now=start_s + i * step_s, ticks=ticks))
    return ticks


def test_unthrottled_guest_runs_at_tick_hz_and_loses_nothing() -> None:
    pacer = _running()
    ticks = _run_for(pacer, start_s=0.0, end_s=2.0, ticks=0)
    assert ticks == 2 * HZ
    assert pacer.throttled_ticks(now=2.0) == 0
    assert pacer.lost_ticks == 0


@pytest.mark.parametrize("percent", [20, 50, 99])
def test_cpu_throttle_runs_the_remaining_share(percent: int) -> None:
    pacer = _running()
    pacer.set_cpu_throttle(percent, now=0.0, ticks=0)
    ticks = _run_for(pacer, start_s=0.0, end_s=10.0, ticks=0)
    expected = 10 * HZ * (100 - percent) // 100
    assert abs(ticks - expected) <= 1
    assert abs(pacer.throttled_ticks(now=10.0) - (10 * HZ - expected)) <= 1


def test_lifting_the_throttle_restores_full_speed_from_then_on() -> None:
    pacer = _running()
    pacer.set_cpu_throttle(50, now=0.0, ticks=0)
    ticks = _run_for(pacer, start_s=0.0, end_s=1.0, ticks=0)
    pacer.set_cpu_throttle(0, now=1.0, ticks=ticks)
    ticks = _run_for(pacer, start_s=1.0, end_s=2.0, ticks=ticks)
    assert abs(ticks - 1500) <= 1
    assert abs(pacer.throttled_ticks(now=2.0) - 500) <= 1


def test_dirty_limit_caps_the_page_write_rate() -> None:
    pacer = _running()
    pacer.set_migration_limit(100, now=0.0, ticks=0)  # 100 MiB/s of the 1000 it writes
    ticks = _run_for(pacer, start_s=0.0, end_s=10.0, ticks=0)
    writes = ticks * WRITES_PER_S // HZ
    assert abs(writes / 10 - pages_per_s(100)) <= WRITES_PER_S / HZ / 10  # within one tick
    assert pacer.limit_of(0) == 100


def test_dirty_limit_does_not_slow_a_guest_that_writes_nothing() -> None:
    pacer = _running(writes_per_s=0)
    pacer.set_migration_limit(1, now=0.0, ticks=0)
    assert _run_for(pacer, start_s=0.0, end_s=1.0, ticks=0) == HZ
    assert pacer.throttled_ticks(now=1.0) == 0


def test_a_dirty_limit_above_the_write_rate_costs_nothing() -> None:
    pacer = _running()
    pacer.set_vcpu_limit(None, 2000, now=0.0, ticks=0)
    assert _run_for(pacer, start_s=0.0, end_s=1.0, ticks=0) == HZ


def test_the_lower_of_the_user_and_migration_limits_applies() -> None:
    pacer = _running(vcpus=2)
    pacer.set_vcpu_limit(1, 50, now=0.0, ticks=0)
    pacer.set_migration_limit(200, now=0.0, ticks=0)
    assert (pacer.limit_of(0), pacer.limit_of(1)) == (200, 50)
    # vCPUs advance in lockstep: the guest runs at its most limited writer's pace.
    assert pacer.rate_hz == pytest.approx(pages_per_s(50) * HZ / WRITES_PER_S)
    pacer.set_migration_limit(None, now=0.0, ticks=0)
    assert (pacer.limit_of(0), pacer.limit_of(1)) == (None, 50)
    pacer.set_vcpu_limit(None, None, now=0.0, ticks=0)
    assert not pacer.dirty_limited
    assert pacer.rate_hz == HZ


def test_stopped_time_is_not_counted_as_throttled() -> None:
    pacer = _running()
    pacer.set_cpu_throttle(50, now=0.0, ticks=0)
    ticks = _run_for(pacer, start_s=0.0, end_s=1.0, ticks=0)
    pacer.stopped(now=1.0, ticks=ticks)
    pacer.set_cpu_throttle(0, now=5.0, ticks=ticks)  # changed while stopped
    assert abs(pacer.throttled_ticks(now=9.0) - 500) <= 1
    pacer.started(now=9.0, ticks=ticks)
    assert _run_for(pacer, start_s=9.0, end_s=10.0, ticks=ticks) - ticks == HZ


def test_a_busy_host_drops_time_instead_of_racing() -> None:
    pacer = _running()
    assert pacer.due_ticks(now=5.0, ticks=0) == 100  # at most 100 ms of backlog
    assert pacer.lost_ticks == 5 * HZ - 100
    assert pacer.due_ticks(now=5.0, ticks=100) == 0


def test_a_very_slow_guest_waits_for_its_next_tick() -> None:
    pacer = _running()
    pacer.set_migration_limit(1, now=0.0, ticks=0)  # 256 pages/s: one tick a second
    assert pacer.rate_hz == pytest.approx(1.0)
    assert pacer.due_ticks(now=0.5, ticks=0) == 0
    assert pacer.wait_s(now=0.5, ticks=0) == pytest.approx(0.5)
    assert pacer.due_ticks(now=1.0, ticks=0) == 1


def test_query_figures() -> None:
    pacer = _running(vcpus=2)
    assert pacer.vcpu_limits(ticks_per_s=HZ) == []
    assert pacer.throttle_time_per_round_us() == 0
    pacer.set_vcpu_limit(0, 100, now=0.0, ticks=0)
    rows = pacer.vcpu_limits(ticks_per_s=pacer.rate_hz)
    assert rows == [VcpuLimit(cpu_index=0, limit_rate=100, current_rate=100)]
    ring_full_us = DIRTY_RING_ENTRIES / pages_per_s(100) * 1e6
    assert pacer.ring_full_time_us() == round(ring_full_us)
    free_us = DIRTY_RING_ENTRIES / WRITES_PER_S * 1e6
    assert pacer.throttle_time_per_round_us() == pytest.approx(ring_full_us - free_us, abs=1)
