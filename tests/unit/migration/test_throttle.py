"""The throttle policy: QEMU's auto-converge trigger and steps, dirty-limit, forced throttling."""

from __future__ import annotations

import pytest

from migration.params import MigrationCapabilities, MigrationParameters
from migration.throttle import OFF, ThrottlePolicy, ThrottleSetting
from vmsim import PAGE_SIZE

AUTO = MigrationCapabilities(auto_converge=True)
LIMIT = MigrationCapabilities(dirty_limit=True)
PARAMS = MigrationParameters()
MB = 1_000_000


class Link:
    """A link sending `sent_per_s` bytes/s and a guest dirtying `dirty_pages_per_sync` per sync."""

    def __init__(self, policy: ThrottlePolicy, *, sent_per_s: int, dirty_pages_per_sync: int):
        self.policy = policy
        self.sent_per_s = sent_per_s
        self.dirty_pages_per_sync = dirty_pages_per_sync
        self.now = 0.0
        self.sync = 1

    def syncs(
        self,
        n: int,
        *,
        every_s: float = 0.4,
        caps: MigrationCapabilities = AUTO,
        params: MigrationParameters = PARAMS,
    ) -> list[ThrottleSetting]:
        """Run n syncs `every_s` apart; the settings the policy changed to."""
        changes = []
        for _ in range(n):
            self.now += every_s
            self.sync += 1
            change = self.policy.on_sync(
                now=self.now,
                new_dirty_pages=self.dirty_pages_per_sync,
                transferred_bytes=round(self.now * self.sent_per_s),
                sync=self.sync,
                params=params,
                caps=caps,
            )
            if change is not None:
                changes.append(change)
        return changes


def busy(policy: ThrottlePolicy | None = None) -> Link:
    """Dirtying 4 x faster than sending: 100 MB/s sent, 400 MB/s dirtied."""
    policy = policy or ThrottlePolicy(now=0.0, transferred_bytes=0)
    return Link(policy, sent_per_s=100 * MB, dirty_pages_per_sync=40 * MB // PAGE_SIZE * 4)


def test_nothing_happens_without_a_throttle_capability():
    link = busy()
    assert [] == link.syncs(20, caps=MigrationCapabilities())
    assert OFF == link.policy.setting


def test_the_second_high_period_throttles_to_the_initial_percentage():
    link = busy()
    # Periods close at the first sync more than 1 s after the last: syncs 3, 6, ... (1.2 s).
    assert [] == link.syncs(3)  # the first high period
    assert [ThrottleSetting(cpu_percent=20)] == link.syncs(3)
    assert 7 == link.policy.started_at_pass


def test_a_shorter_trigger_period_throttles_sooner():
    link = busy()
    params = MigrationParameters(throttle_trigger_period_ms=500)
    # Syncs every 0.4 s: periods close at 0.8 s and 1.6 s, not 1.2 s and 2.4 s.
    assert not link.policy.period_due(0.5, params)
    assert link.policy.period_due(0.51, params)
    assert [] == link.syncs(2, params=params)
    assert [ThrottleSetting(cpu_percent=20)] == link.syncs(2, params=params)
    assert 5 == link.policy.started_at_pass


def test_later_triggers_add_the_increment_up_to_the_maximum():
    link = busy()
    params = MigrationParameters(max_cpu_throttle_percent=45)
    changes = link.syncs(6 * 5, params=params)
    assert [20, 30, 40, 45] == [c.cpu_percent for c in changes]  # then it stays at 45


def test_a_guest_that_dirties_less_than_the_threshold_is_left_alone():
    link = Link(
        ThrottlePolicy(now=0.0, transferred_bytes=0),
        sent_per_s=100 * MB,
        dirty_pages_per_sync=(100 * MB * 4 // 10) * 49 // 100 // PAGE_SIZE,  # 49 % of sent
    )
    assert [] == link.syncs(30)


def test_high_periods_need_not_be_consecutive():
    """As in QEMU: dirty_rate_high_cnt is not reset by a calm period."""
    link = busy()
    link.syncs(3)  # high
    link.dirty_pages_per_sync = 0
    assert [] == link.syncs(3)  # calm
    link.dirty_pages_per_sync = busy().dirty_pages_per_sync
    assert [ThrottleSetting(cpu_percent=20)] == link.syncs(3)


def test_tailslow_takes_only_the_step_that_reaches_the_threshold():
    link = Link(
        ThrottlePolicy(now=0.0, transferred_bytes=0),
        sent_per_s=100 * MB,
        # 60 % of the bytes sent are dirtied: the threshold is 50 %.
        dirty_pages_per_sync=100 * MB * 4 // 10 * 60 // 100 // PAGE_SIZE,
    )
    params = MigrationParameters(cpu_throttle_tailslow=True)
    changes = link.syncs(6 * 2, params=params)
    # 20 first; then cpu_now 80 x (1 - 50/60) = 13.3 -> 13 points, not more than the increment.
    assert [20, 30] == [c.cpu_percent for c in changes]
    link.dirty_pages_per_sync = link.dirty_pages_per_sync * 11 // 12  # 55 %: 70 x 5/55 = 6.4
    assert [36] == [c.cpu_percent for c in link.syncs(6, params=params)]


def test_dirty_limit_caps_every_vcpu_once_and_again_if_the_parameter_changed():
    link = busy()
    changes = link.syncs(12, caps=LIMIT)
    assert [ThrottleSetting(dirty_limit_mb_per_s=1)] == changes  # QEMU's default: 1 MB/s
    params = MigrationParameters(vcpu_dirty_limit_mb_per_s=50)
    assert [ThrottleSetting(dirty_limit_mb_per_s=50)] == link.syncs(6, caps=LIMIT, params=params)


def test_forcing_throttles_now_and_from_then_on_as_auto_converge():
    policy = ThrottlePolicy(now=0.0, transferred_bytes=0)
    none = MigrationCapabilities()
    assert ThrottleSetting(cpu_percent=20) == policy.force(PARAMS, none, sync=5)
    assert policy.forced
    assert 5 == policy.started_at_pass
    link = busy(policy)
    link.sync = 5
    assert [30] == [c.cpu_percent for c in link.syncs(6, caps=none)]


def test_forcing_with_dirty_limit_applies_the_limit():
    policy = ThrottlePolicy(now=0.0, transferred_bytes=0)
    setting = policy.force(MigrationParameters(vcpu_dirty_limit_mb_per_s=8), LIMIT, sync=3)
    assert ThrottleSetting(dirty_limit_mb_per_s=8) == setting
    assert not policy.forced


@pytest.mark.parametrize("caps", [AUTO, LIMIT])
def test_lift_turns_it_off_once(caps):
    link = busy()
    link.syncs(6, caps=caps)
    assert link.policy.setting.active
    assert link.policy.lift()
    assert OFF == link.policy.setting
    assert not link.policy.lift()
