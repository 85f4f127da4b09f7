"""Postcopy: the guest moves first and pulls its pages, and still equals the replay.

Each migration runs both daemons in one process over real sockets. The guests here write faster
than precopy converges under a 1 ms downtime limit, so `migrate-start-postcopy` switches; the
destination's vCPUs then block on pages that have not arrived and request them. Whatever the
order the pages arrive in, the migrated VM equals a replay that never moved.
"""

from __future__ import annotations

import asyncio

import pytest

from migration.source_postcopy import POSTCOPY_MIN_BATCH_PAGES
from migration.source_resume import NEVER_SWITCHED
from tests.helpers.inproc import FINAL, Pair, make_pair, small_vm
from tests.integration import paths
from vmsim import WorkloadKind

BUSY = {"downtime-limit": 1}


async def start_postcopy(pair: Pair) -> None:
    """Migrate with postcopy-ram, and ask for the switch at once (it happens at a round)."""
    await pair.source.execute("migrate-set-parameters", BUSY)
    await pair.migrate(postcopy_ram=True)
    await pair.source.execute("migrate-start-postcopy")


async def assert_completed_at_the_destination(
    pair: Pair, source_path: list, dest_path: list
) -> None:
    """Both sides completed along these paths, the VM runs only at the destination, replay-equal."""
    assert "completed" == await pair.source.wait(FINAL, timeout_s=20)
    assert "completed" == await pair.dest.wait({"completed"}, timeout_s=20)
    assert source_path == paths.collapsed(pair.source.source_path())
    assert dest_path == pair.dest.dest_path()
    assert not await pair.source.runs()
    await pair.dest.assert_matches_replay()


@pytest.mark.parametrize("workload", [WorkloadKind.RANDOM, WorkloadKind.AB, WorkloadKind.HOTSET])
def test_a_postcopy_migration_completes_and_matches_the_replay(run, tmp, workload):
    async def main() -> None:
        vm = small_vm(ram_mib=32, workload=workload, dirty_rate=400_000, hot_mib=2)
        pair = await make_pair(tmp, vm=vm)
        try:
            await start_postcopy(pair)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
            assert "completed" == await pair.dest.wait({"completed"}, timeout_s=30)
            assert paths.SRC_POSTCOPY_COMPLETED == paths.collapsed(pair.source.source_path())
            assert paths.DST_POSTCOPY_COMMITTED == pair.dest.dest_path()

            info = await pair.source.execute("query-migrate")
            assert isinstance(info, dict)
            ram = info["ram"]
            assert ram["postcopy-bytes"] > 0  # pages went after POSTCOPY_RUN
            assert info["downtime"] < info["total-time"]  # stop to RUN, not to the last page
            metrics = pair.source.source.metrics
            assert metrics.postcopy_missing_pages > 0
            dest_info = await pair.dest.execute("query-migrate")
            assert isinstance(dest_info, dict)
            assert dest_info["postcopy-blocktime"] >= 0
            if workload is not WorkloadKind.IDLE:
                assert dest_info["x-postcopy-blocks"]["count"] > 0  # the guest faulted
                assert info["ram"]["postcopy-requests"] > 0
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_an_idle_guest_in_postcopy_completes_by_the_background_push(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, vm=small_vm(ram_mib=32, workload=WorkloadKind.IDLE))
        try:
            await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 8 << 20})
            await start_postcopy(pair)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
            assert paths.SRC_POSTCOPY_COMPLETED == pair.source.source_path()
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_start_postcopy_is_refused_without_the_capability_or_a_migration(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            with pytest.raises(Exception, match="Postcopy must be started after migration"):
                await pair.source.execute("migrate-start-postcopy")
            await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 1 << 20})
            await pair.migrate()
            with pytest.raises(Exception, match="Enable postcopy with migrate_set_capability"):
                await pair.source.execute("migrate-start-postcopy")
            await pair.source.execute("migrate_cancel")
            assert await pair.source.runs()
        finally:
            await pair.close()

    run(main)


def test_a_refused_switch_resumes_the_vm_at_the_source(run, tmp):
    """The ownership arbiter says no before POSTCOPY_RUN: nothing ran there, so it runs here."""

    async def main() -> None:
        pair = await make_pair(tmp, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            pair.source.vmm.decide_handover = lambda _id: (False, "the arbiter says no")  # type: ignore[method-assign]
            await start_postcopy(pair)
            assert "failed" == await pair.source.wait(FINAL, timeout_s=20)
            assert paths.SRC_POSTCOPY_REFUSED == paths.collapsed(pair.source.source_path())
            assert await pair.source.runs()
            info = await pair.source.execute("query-migrate")
            assert isinstance(info, dict)
            assert "arbiter refused" in str(info["error-desc"])
            assert "failed" == await pair.dest.wait({"failed"})
        finally:
            await pair.close()

    run(main)


def test_a_cut_in_postcopy_pauses_both_sides_and_runs_the_vm_nowhere_twice(run, tmp):
    """The return path is cut at the first page request: postcopy-paused on both sides.

    The source's VM stays stopped with the missing pages (it must never run again: the guest
    ran at the destination); the destination's guest blocks on the page it asked for. Neither
    can cancel. (x-auto-recover off: with it, the source would reconnect at once.)
    """

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            await pair.source.execute("migrate-set-parameters", {"x-auto-recover": False})
            pair.fault(type="cut", before_frame="REQ_PAGES")
            await start_postcopy(pair)
            assert "postcopy-paused" == await pair.source.wait({"postcopy-paused"}, 20)
            assert "postcopy-paused" == await pair.dest.wait({"postcopy-paused"}, 20)
            assert paths.SRC_POSTCOPY_PAUSED == paths.collapsed(pair.source.source_path())
            assert paths.DST_POSTCOPY_PAUSED == pair.dest.dest_path()
            assert not await pair.source.runs()
            with pytest.raises(Exception, match="in postcopy"):
                await pair.source.execute("migrate_cancel")
            info = await pair.source.execute("query-migrate")
            assert isinstance(info, dict)
            assert "postcopy paused" in str(info["error-desc"])
            dest = pair.dest.vmm.vm
            assert dest is not None
            await asyncio.sleep(0.1)
            assert dest.blocktime.blocked  # waiting for a page only the source has

            await pair.source.close()  # the daemon exits: the VM is lost, as in QEMU
            assert paths.SRC_SHUTDOWN_POSTCOPY_PAUSED == paths.collapsed(pair.source.source_path())
        finally:
            await pair.close()

    run(main)


def test_a_source_that_exits_in_postcopy_leaves_the_destination_paused(run, tmp):
    """The source exits in postcopy-active; what it had queued (RUN included) still arrives.

    As in QEMU, the pages only the source held are lost with it: the destination runs the
    guest until it needs one of them (postcopy-paused), and nothing runs it twice.
    """

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            assert pair.proxy is not None
            fault = pair.fault(type="stall", direction="main", before_frame="POSTCOPY_RUN")
            await start_postcopy(pair)
            await pair.proxy.wait_fired(fault, 20)
            assert "postcopy-active" == await pair.source.status()
            await pair.source.close()
            assert paths.SRC_SHUTDOWN_POSTCOPY == paths.collapsed(pair.source.source_path())
            pair.proxy.release()
            assert "postcopy-paused" == await pair.dest.wait({"postcopy-paused"}, 20)
            assert paths.DST_POSTCOPY_PAUSED == pair.dest.dest_path()
            info = await pair.dest.execute("query-migrate")
            assert isinstance(info, dict)
            assert "pages not yet received are on the source" in str(info["error-desc"])
        finally:
            await pair.close()

    run(main)


async def assert_taken_back(
    pair: Pair,
    dest_path: list[paths.Row] = paths.DST_DISCARDED_ACTIVE,
    why: str = "discarded by the destination before its guest ran",
) -> None:
    """The recovery heard the destination never ran it: the VM runs at the source, replay-equal."""
    assert "failed" == await pair.source.wait(FINAL, timeout_s=20)
    assert paths.SRC_POSTCOPY_TAKEN_BACK == paths.collapsed(pair.source.source_path())
    assert "failed" == await pair.dest.wait({"failed"}, timeout_s=20)
    assert dest_path == pair.dest.dest_path()
    info = await pair.source.execute("query-migrate")
    assert isinstance(info, dict)
    assert why in info["error-desc"]
    assert await pair.source.runs()
    assert not await pair.dest.runs()
    await pair.source.assert_matches_replay()


@pytest.mark.parametrize(
    ("frame", "dest_path", "why"),
    [
        ("POSTCOPY_RAM_DISCARD", paths.DST_RESUMED_BROKEN_DISCARDED, NEVER_SWITCHED),
        ("POSTCOPY_LISTEN", paths.DST_DISCARDED_ACTIVE, "discarded by the destination"),
        ("POSTCOPY_RUN", paths.DST_DISCARDED_ACTIVE, "discarded by the destination"),
    ],
)
def test_a_cut_before_the_switch_arrives_gives_the_vm_back_to_the_source(
    run, tmp, frame, dest_path, why
):
    """The source switched (its VM stopped, RUN queued); the cut lands before RUN arrives.

    The destination never ran the guest, so the VM resumes at the source, replay-equal, instead
    of staying paused for ever, whichever the source hears when it reconnects by itself. Cut
    after LISTEN, the destination discarded its copy and refuses the recover with DISCARDED. Cut
    before the first discard, it saw none of the switch and kept its precopy for a resume, so it
    answers with RESUME_POINT; the source takes the VM back all the same and its RESOLVE drops
    the destination's copy.
    """

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            pair.fault(type="cut", before_frame=frame)
            await start_postcopy(pair)
            await assert_taken_back(pair, dest_path, why)
        finally:
            await pair.close()

    run(main)


@pytest.mark.parametrize(("source_ms", "dest_ms"), [(2500, 1000), (1000, 5000)])
def test_a_switch_stalled_on_its_way_gives_the_vm_back_to_the_source(run, tmp, source_ms, dest_ms):
    """POSTCOPY_LISTEN..RUN held on the link until both sides give up, in either order.

    The destination times out first and discards the stream, or the source does and its
    recover channel takes the stream over while the old connection still looks alive (which
    discards it too); either way the recovery is refused with DISCARDED and the VM resumes at
    the source, replay-equal.
    """

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            for side, timeout_ms in ((pair.source, source_ms), (pair.dest, dest_ms)):
                await side.execute("migrate-set-parameters", {"x-peer-timeout-ms": timeout_ms})
            stall = pair.fault(type="stall", direction="main", before_frame="POSTCOPY_LISTEN")
            await start_postcopy(pair)
            await assert_taken_back(pair)
            assert stall.fired
        finally:
            await pair.close()

    run(main)


def test_a_cut_after_the_last_page_leaves_the_vm_at_the_destination(run, tmp):
    """HANDOVER never arrives, but every page did: the destination completes on its own.

    The source, in doubt after HANDOVER, asks (RESOLVE) and hears committed: completed.
    """

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            pair.fault(type="cut", before_frame="HANDOVER")
            await start_postcopy(pair)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=20)
            assert "completed" == await pair.dest.wait({"completed"}, timeout_s=20)
            assert paths.SRC_POSTCOPY_IN_DOUBT_COMMITTED == paths.collapsed(
                pair.source.source_path()
            )
            assert paths.DST_POSTCOPY_SOURCE_LOST == pair.dest.dest_path()
            assert not await pair.source.runs()
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_a_timeout_policy_switches_to_postcopy(run, tmp):
    """`x-timeout-action postcopy`: the completion timeout expires, the migration switches."""

    async def main() -> None:
        vm = small_vm(ram_mib=32, workload=WorkloadKind.AB, dirty_rate=400_000)
        pair = await make_pair(tmp, vm=vm)
        try:
            # 32 MiB at 32 s per GiB: one second; at 8 MB/s precopy needs four
            policy = {"x-completion-timeout-per-gib": 32, "x-timeout-action": "postcopy"}
            policy |= {"max-bandwidth": 8 << 20, **BUSY}
            await pair.source.execute("migrate-set-parameters", policy)
            with pytest.raises(Exception, match="needs the postcopy-ram capability"):
                await pair.migrate()
            await pair.migrate(postcopy_ram=True)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
            info = await pair.source.execute("query-migrate")
            assert isinstance(info, dict)
            assert [{"policy": "x-completion-timeout-per-gib", "action": "postcopy"}] == [
                {k: v for k, v in a.items() if k != "at-ms"} for a in info["x-timeout-actions"]
            ]
            assert paths.SRC_POSTCOPY_COMPLETED == paths.collapsed(pair.source.source_path())
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


async def pause_at_the_first_request(pair: Pair) -> None:
    """Postcopy, then the connection cut at the first page request: paused on both sides
    (x-auto-recover off: these tests resume by hand)."""
    await pair.source.execute("migrate-set-parameters", {"x-auto-recover": False})
    pair.fault(type="cut", before_frame="REQ_PAGES")
    await start_postcopy(pair)
    assert "postcopy-paused" == await pair.source.wait({"postcopy-paused"}, 20)
    assert "postcopy-paused" == await pair.dest.wait({"postcopy-paused"}, 20)


def test_migrate_resume_takes_a_paused_postcopy_up_again(run, tmp):
    """`migrate {uri, resume: true}`: the recover channel brings the received bitmap back,
    the source sends what is missing, and the VM completes at the destination, replay-equal."""

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            await pause_at_the_first_request(pair)
            await pair.source.execute("migrate", {"uri": pair.uri, "resume": True})
            await assert_completed_at_the_destination(
                pair, paths.SRC_POSTCOPY_RECOVERED, paths.DST_POSTCOPY_RECOVERED
            )
        finally:
            await pair.close()

    run(main)


def test_a_recovery_that_fails_leaves_it_paused_until_one_succeeds(run, tmp):
    """A resume to nowhere (recover-setup fails), one cut during the bitmap exchange (recover
    fails on both sides), then one that works: paused in between, never lost, never twice."""

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            await pause_at_the_first_request(pair)
            nowhere = "tcp:127.0.0.1:1"
            await pair.source.execute("migrate", {"uri": nowhere, "resume": True})
            assert "postcopy-paused" == await pair.source.wait({"postcopy-paused"}, 20)

            pair.fault(type="cut", before_frame="RECV_BITMAP")
            await pair.source.execute("migrate", {"uri": pair.uri, "resume": True})
            await asyncio.sleep(0.2)
            assert "postcopy-paused" == await pair.source.wait({"postcopy-paused"}, 20)
            assert "postcopy-paused" == await pair.dest.wait({"postcopy-paused"}, 20)
            with pytest.raises(Exception, match="Cannot resume if there is no paused"):
                await pair.dest.execute("migrate", {"uri": pair.uri, "resume": True})

            await pair.source.execute("migrate", {"uri": pair.uri, "resume": True})
            assert "completed" == await pair.source.wait(FINAL, timeout_s=20)
            assert "completed" == await pair.dest.wait({"completed"}, timeout_s=20)
            assert paths.SRC_POSTCOPY_RECOVERED_AFTER_TWO_FAILURES == paths.collapsed(
                pair.source.source_path()
            )
            assert paths.DST_POSTCOPY_RECOVERED_AFTER_A_CUT == pair.dest.dest_path()
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_a_cut_in_postcopy_recovers_by_itself(run, tmp):
    """x-auto-recover (on by default): the source reconnects on its own after the cut, and the
    migration completes with no operator step, replay-equal."""

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            pair.fault(type="cut", before_frame="REQ_PAGES")
            await start_postcopy(pair)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=20)
            assert "completed" == await pair.dest.wait({"completed"}, timeout_s=20)
            assert paths.SRC_POSTCOPY_RECOVERED == paths.collapsed(pair.source.source_path())
            assert paths.DST_POSTCOPY_RECOVERED == pair.dest.dest_path()
            assert pair.source.source.auto_recover.attempts >= 1
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_auto_recovery_waits_out_an_outage(run, tmp):
    """Every recover channel is cut at its bitmap for a while (three times); the source keeps
    trying with backoff, each failure leaving both sides paused, and completes once it heals."""

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            pair.fault(type="cut", before_frame="REQ_PAGES")
            for _ in range(3):  # the first three recover channels are cut at their bitmap
                pair.fault(type="cut", before_frame="RECV_BITMAP")
            await start_postcopy(pair)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
            assert pair.source.source.auto_recover.attempts >= 4
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_a_cut_inside_loaded_recovers_to_completed_on_both_sides(run, tmp):
    """Found by the postcopy cut campaign (seed 7, runs 41 and 59): the connection breaks
    inside LOADED. Every page is at the destination, which completes by itself; the source,
    paused, reconnects and hears that (a full bitmap, then LOADED, HANDOVER, RESUMED) instead
    of being refused for ever."""

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True, vm=small_vm(ram_mib=16, dirty_rate=400_000))
        try:
            pair.fault(type="cut", before_frame="LOADED")
            await start_postcopy(pair)
            await assert_completed_at_the_destination(
                pair, paths.SRC_POSTCOPY_RECOVERED, paths.DST_POSTCOPY_SOURCE_LOST
            )
        finally:
            await pair.close()

    run(main)


def test_max_postcopy_bandwidth_holds_the_push_but_never_a_request(run, tmp):
    """`max-postcopy-bandwidth` 16 MiB/s: the 32 MiB background push takes about 2 s; the
    pages the guest asks for go at once all the same (it completes, replay-equal)."""

    async def main() -> None:
        vm = small_vm(ram_mib=32, workload=WorkloadKind.HOTSET, dirty_rate=2000, hot_mib=1)
        pair = await make_pair(tmp, vm=vm)
        try:
            await pair.source.execute(
                "migrate-set-parameters", {"max-postcopy-bandwidth": 16 << 20}
            )
            await start_postcopy(pair)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
            metrics = pair.source.source.metrics
            assert metrics.postcopy_run_at is not None
            assert metrics.ended_at is not None
            postcopy_s = metrics.ended_at - metrics.postcopy_run_at
            assert 1.5 < postcopy_s < 10, postcopy_s
            assert metrics.postcopy_requests > 0
            push = pair.source.source.sender.postcopy
            assert push is not None  # its frames are sized to the cap: the smallest
            assert POSTCOPY_MIN_BATCH_PAGES == push.batch_pages
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)
