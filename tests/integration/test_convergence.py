"""A guest that dirties memory faster than the link carries it: throttles and timeout policies.

The guest is a 4 MiB ab guest rewriting all of its RAM about 20 times a second (80 MB/s) on a
link capped at 16 MB/s (`max-bandwidth`) with a 50 ms downtime limit: every pass finds the whole
RAM dirty again, so precopy alone never converges (the cancel-by-policy test shows it running
until its deadline). Auto-converge and dirty-limit slow the guest until it does; the timeout
policies give up or turn the throttle on. After every ending the throttle is lifted and the VM
matches a replay that was never throttled: throttling changes when ticks run, not what they do.
"""

from __future__ import annotations

import asyncio

import pytest

from netio import QMPCommandError
from tests.helpers.inproc import FINAL, Daemon, Pair, make_pair, small_vm
from tests.integration import paths

LINK = {"max-bandwidth": 16_000_000, "downtime-limit": 50}
FAST_THROTTLE = {"cpu-throttle-initial": 90, "cpu-throttle-increment": 9}
# 4 MiB is 1/256 GiB: 512 s per GiB allows this guest 2 s.
TWO_SECONDS_PER_GIB = 512
ONE_SECOND_PER_GIB = 256


def busy_vm():
    """The guest the link cannot keep up with (see the module docstring)."""
    return small_vm(workload="ab", ram_mib=4, dirty_rate=20_000)


async def busy_pair(tmp, *, proxy: bool = False, **parameters: object) -> Pair:
    pair = await make_pair(tmp, vm=busy_vm(), proxy=proxy)
    await pair.source.execute("migrate-set-parameters", {**LINK, **parameters})
    return pair


async def query(daemon: Daemon, command: str) -> dict[str, object]:
    reply = await daemon.execute(command)
    assert isinstance(reply, dict)
    return reply


async def wait_throttled(daemon: Daemon, timeout_s: float = 10.0) -> dict[str, object]:
    """Poll query-migrate until the migration throttles the guest."""
    async with asyncio.timeout(timeout_s):
        while True:
            info = await query(daemon, "query-migrate")
            if "x-throttle-started-at-pass" in info:
                return info
            await asyncio.sleep(0.02)


async def assert_unthrottled(daemon: Daemon) -> None:
    vm = await query(daemon, "x-query-vm")
    assert 0 == vm["cpu-throttle-percentage"]
    assert [] == await daemon.execute("query-vcpu-dirty-limit")


# --------------------------------------------------------------------------- auto-converge


def test_auto_converge_throttles_the_guest_until_precopy_converges(run, tmp):
    """QEMU's /migration/auto_converge: throttled at pre-switchover, then continue, complete."""

    async def main() -> None:
        pair = await busy_pair(tmp, **FAST_THROTTLE)
        try:
            await pair.migrate(auto_converge=True, pause_before_switchover=True)
            assert "pre-switchover" == await pair.source.wait({"pre-switchover"}, timeout_s=15)
            info = await query(pair.source, "query-migrate")
            assert 90 <= info["cpu-throttle-percentage"] <= 99
            ram = info["ram"]
            assert isinstance(ram, dict)
            assert ram["dirty-sync-count"] >= 4  # two high periods of at least two passes
            assert info["x-throttle-started-at-pass"] >= 3

            await pair.source.execute("migrate-continue", {"state": "pre-switchover"})
            assert "completed" == await pair.source.wait(FINAL)
            path = paths.collapsed(pair.source.source_path())
            assert paths.SRC_THROTTLED_COMPLETED_AFTER_CONTINUE == path
            info = await query(pair.source, "query-migrate")
            assert 0 == info["cpu-throttle-percentage"]  # lifted at the end
            assert info["x-guest-ticks-throttled"] > 0
            await assert_unthrottled(pair.source)
            await assert_unthrottled(pair.dest)  # the throttle does not travel
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main, timeout_s=30)


def test_cancel_lifts_the_throttle_and_the_guest_runs_at_full_speed(run, tmp):
    async def main() -> None:
        pair = await busy_pair(tmp, **FAST_THROTTLE)
        try:
            await pair.migrate(auto_converge=True)
            await wait_throttled(pair.source)
            vm = await query(pair.source, "x-query-vm")
            assert vm["cpu-throttle-percentage"] >= 90

            await pair.source.execute("migrate_cancel")
            assert "cancelled" == await pair.source.wait(FINAL)
            assert paths.SRC_CANCELLED_THROTTLED == paths.collapsed(pair.source.source_path())
            await assert_unthrottled(pair.source)
            assert await pair.source.runs()
            await pair.source.assert_matches_replay()
        finally:
            await pair.close()

    run(main, timeout_s=30)


# --------------------------------------------------------------------------- dirty-limit


def test_dirty_limit_caps_the_writers_until_precopy_converges(run, tmp):
    async def main() -> None:
        pair = await busy_pair(tmp, **{"vcpu-dirty-limit": 4})
        try:
            await pair.migrate(dirty_limit=True, pause_before_switchover=True)
            assert "pre-switchover" == await pair.source.wait({"pre-switchover"}, timeout_s=15)
            info = await query(pair.source, "query-migrate")
            assert "cpu-throttle-percentage" not in info
            assert info["dirty-limit-ring-full-time"] == 4096 * 1_000_000 // 1024  # 4 MB/s
            assert info["dirty-limit-throttle-time-per-round"] > 0
            limits = await pair.source.execute("query-vcpu-dirty-limit")
            assert [{"cpu-index": 0, "limit-rate": 4, "current-rate": 0}] == limits  # stopped
            with pytest.raises(QMPCommandError, match="while migration is running"):
                await pair.source.execute("set-vcpu-dirty-limit", {"dirty-rate": 100})

            await pair.source.execute("migrate-continue", {"state": "pre-switchover"})
            assert "completed" == await pair.source.wait(FINAL)
            path = paths.collapsed(pair.source.source_path())
            assert paths.SRC_THROTTLED_COMPLETED_AFTER_CONTINUE == path
            await assert_unthrottled(pair.source)
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main, timeout_s=30)


def test_set_vcpu_dirty_limit_slows_only_a_writing_guest(run, tmp):
    """QEMU's /migration/vcpu_dirty_limit: the limit lowers the dirty rate; cancel restores it."""

    async def main() -> None:
        pair = await busy_pair(tmp)
        try:
            source = pair.source
            await source.execute("set-vcpu-dirty-limit", {"cpu-index": 0, "dirty-rate": 8})
            limits = await source.execute("query-vcpu-dirty-limit")
            assert isinstance(limits, list)
            assert [(0, 8)] == [(row["cpu-index"], row["limit-rate"]) for row in limits]
            await asyncio.sleep(1.2)  # a whole rate window at the limit
            vm = await query(source, "x-query-vm")
            assert vm["page-writes-per-second"] <= 8 * 256 * 1.1  # 8 MB/s is 2048 pages/s
            assert vm["throttled-ticks"] > 0

            await source.execute("cancel-vcpu-dirty-limit")
            assert [] == await source.execute("query-vcpu-dirty-limit")
            await asyncio.sleep(1.2)
            vm = await query(source, "x-query-vm")
            assert vm["page-writes-per-second"] > 20_000 * 0.5
            with pytest.raises(QMPCommandError, match="incorrect cpu index"):
                await source.execute("set-vcpu-dirty-limit", {"cpu-index": 1, "dirty-rate": 1})
            await source.assert_matches_replay()
        finally:
            await pair.close()

    run(main, timeout_s=30)


# --------------------------------------------------------------------------- timeout policies


def test_completion_timeout_cancels_on_time_and_a_retry_succeeds(run, tmp):
    async def main() -> None:
        pair = await busy_pair(
            tmp,
            **{"x-completion-timeout-per-gib": TWO_SECONDS_PER_GIB, "x-timeout-action": "cancel"},
        )
        try:
            await pair.migrate()
            assert "failed" == await pair.source.wait(FINAL, timeout_s=10)
            info = await query(pair.source, "query-migrate")
            total_ms = pair.source.source.metrics.total_ms(now=0.0)  # ended: the clock is unused
            assert 2000 <= total_ms < 2500  # on time: a timer, not the next round
            assert "x-completion-timeout-per-gib" in info["error-desc"]
            assert "keeps running here" in info["error-desc"]
            actions = info["x-timeout-actions"]
            assert [("x-completion-timeout-per-gib", "cancel")] == [
                (a["policy"], a["action"]) for a in actions
            ]
            event = await pair.source.qmp.wait_event(
                "MIGRATION", 1, lambda e: e.data.get("status") == "failed"
            )
            assert "x-completion-timeout-per-gib" == event.data["x-ended-by"]
            assert paths.SRC_TIMED_OUT == pair.source.source_path()
            assert "failed" == await pair.dest.wait({"failed"})
            assert paths.DST_DISCARDED_ACTIVE == pair.dest.dest_path()
            assert await pair.source.runs()

            # The user's answer: the same migration with auto-converge (which needs two
            # periods of a second to start) and a longer deadline.
            longer = {**FAST_THROTTLE, "x-completion-timeout-per-gib": 4 * TWO_SECONDS_PER_GIB}
            await pair.source.execute("migrate-set-parameters", longer)
            await pair.migrate(auto_converge=True)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=15)
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main, timeout_s=40)


def test_timeout_action_throttle_turns_auto_converge_on(run, tmp):
    async def main() -> None:
        pair = await busy_pair(
            tmp,
            **FAST_THROTTLE,
            **{"x-completion-timeout-per-gib": ONE_SECOND_PER_GIB, "x-timeout-action": "throttle"},
        )
        try:
            await pair.migrate()  # no auto-converge capability
            assert "completed" == await pair.source.wait(FINAL, timeout_s=15)
            info = await query(pair.source, "query-migrate")
            assert [("x-completion-timeout-per-gib", "throttle")] == [
                (a["policy"], a["action"]) for a in info["x-timeout-actions"]
            ]
            assert info["x-timeout-actions"][0]["at-ms"] >= 1000
            assert "cpu-throttle-percentage" in info  # turned on by the policy
            path = paths.collapsed(pair.source.source_path())
            assert paths.SRC_THROTTLED_COMPLETED == path
            await assert_unthrottled(pair.source)
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main, timeout_s=30)


def test_progress_timeout_ends_a_stalled_migration(run, tmp):
    async def main() -> None:
        pair = await busy_pair(
            tmp,
            proxy=True,
            **{"x-progress-timeout": 1, "x-peer-timeout-ms": 10_000},
        )
        try:
            await pair.dest.execute("migrate-set-parameters", {"x-peer-timeout-ms": 10_000})
            await pair.migrate()
            await pair.source.wait({"active"})
            assert pair.proxy is not None
            pair.fault(type="stall", direction="main")
            assert "failed" == await pair.source.wait(FINAL, timeout_s=10)
            info = await query(pair.source, "query-migrate")
            assert "x-progress-timeout" in info["error-desc"]
            assert "x-progress-timeout" == pair.source.source.metrics.ended_by
            assert paths.SRC_TIMED_OUT == pair.source.source_path()
            assert await pair.source.runs()

            pair.proxy.release()  # the stalled bytes (and the ABORT) go through
            await pair.source.execute("migrate-set-parameters", FAST_THROTTLE)
            await pair.migrate(auto_converge=True)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=15)
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main, timeout_s=40)
