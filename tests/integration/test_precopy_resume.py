"""Precopy resume (x-precopy-resume-ms, on by default): a cut precopy reconnects and goes on.

Each cut comes while precopy runs (the bandwidth is capped so that it surely does). The VM
keeps running on the source through the break, the destination keeps what it loaded, and the
source re-sends only the pages whose last copy may not have arrived; every migration ends
digest-equal to the replay (docs/protocol.md 1.11, docs/handover.md).
"""

from __future__ import annotations

from tests.helpers.inproc import FINAL, make_pair, small_vm
from tests.integration import paths
from tests.integration.test_records import assert_chart, records_of

SLOW = {"max-bandwidth": 4 << 20}  # 8 MiB of RAM takes 2 s: the cut lands in precopy


async def _full_speed_after(pair, *faults) -> None:
    """Once the cuts came, lift the cap and let the next switchover decision stop the VM.

    What these tests check is the resume, not convergence: the busy guests (up to 200,000 page
    writes/s, the vCPU sharing one core with both daemons in this process) converge after the
    reconnect only when a pass happens to find nothing dirty, which a loaded machine makes rare
    (CI timed out waiting). A downtime limit of a minute makes the first decision after the
    resume switch over, and the final pass still sends every page the resume re-marked.
    """
    for fault in faults:
        await pair.proxy.wait_fired(fault, 10)
    lifted = {"max-bandwidth": 0, "downtime-limit": 60_000}
    await pair.source.execute("migrate-set-parameters", lifted)


async def _cut_and_resume(
    tmp, *cuts: dict, vm=None, xbzrle: bool = False, twice: bool = False
) -> dict:
    """Migrate through `cuts` (proxy faults); it must complete resumed, replay-equal."""
    pair = await make_pair(tmp, proxy=True, vm=vm)
    try:
        await pair.source.execute("migrate-set-parameters", SLOW)
        faults = [pair.fault(type="cut", direction="main", **cut) for cut in cuts]
        await pair.migrate(xbzrle=xbzrle)
        await _full_speed_after(pair, *faults)
        assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
        assert "completed" == await pair.dest.wait({"completed"}, timeout_s=10)
        # each cut breaks it once; a loaded machine's short peer timeout may add a break
        source_path = paths.SRC_RESUMED_TWICE_COMPLETED if twice else paths.SRC_RESUMED_COMPLETED
        breaks = paths.breaks_taken(pair.source.source_path(), paths.SRC_RESUMED_COMPLETED)
        assert breaks >= len(cuts)
        if breaks == len(cuts):
            assert source_path == pair.source.source_path()
        dest_breaks = paths.breaks_taken(pair.dest.dest_path(), paths.DST_RESUMED_COMMITTED)
        assert dest_breaks == breaks
        await pair.dest.assert_matches_replay()
        info = await pair.source.execute("query-migrate")
        assert info["x-reconnecting"] is False
        [record] = await records_of(pair.source, role="source")
        assert len(record["summary"]["precopy_breaks_at_pass"]) == breaks
        [received] = await records_of(pair.dest, role="destination")
        # every page came at least once, on one connection or another: all of them count
        assert received["summary"]["received_bytes"] >= info["ram"]["total"]
        assert_chart(record, tmp / "resumed.png")  # with a marker at each break
        return info
    finally:
        await pair.close()


def test_a_cut_mid_pass_resumes_and_completes(run, tmp):
    info = run(lambda: _cut_and_resume(tmp, {"after_bytes": 3 << 20}))
    assert info["x-precopy-breaks"] >= 1
    # Nothing that arrived was sent again: one pass of 8 MiB, what the guest dirtied, and at
    # most what was in flight when the cut came.
    ram = info["ram"]
    assert ram["total"] == 8 << 20
    assert ram["transferred"] < ram["total"] * 3


def test_two_cuts_resume_twice(run, tmp):
    # the second cut falls on the first recover channel
    cuts = ({"after_bytes": 2 << 20}, {"after_bytes": 2 << 20})
    info = run(lambda: _cut_and_resume(tmp, *cuts, twice=True))
    assert info["x-precopy-breaks"] >= 2


def test_a_cut_the_destination_does_not_see_hands_over_to_the_recover_channel(run, tmp):
    """Only the source's side is cut: the destination's old connection still looks alive when
    the recover channel arrives; the old one stands down before the new one loads anything."""
    run(lambda: _cut_and_resume(tmp, {"after_bytes": 3 << 20, "side": "client"}))


def test_a_cut_with_xbzrle_resumes_without_a_delta_against_a_lost_copy(run, tmp):
    vm = small_vm(dirty_rate=200_000)
    run(lambda: _cut_and_resume(tmp, {"after_bytes": 10 << 20}, vm=vm, xbzrle=True))  # pass 2+


def test_a_destination_that_never_comes_back_fails_the_migration_and_the_vm_runs_on(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            await pair.source.execute(
                "migrate-set-parameters", {**SLOW, "x-precopy-resume-ms": 800}
            )
            pair.fault(type="cut", direction="main", after_bytes=2 << 20)
            # every recover channel is cut before the destination's answer gets through
            pair.fault(type="cut", direction="return", before_frame="RESUME_POINT", once=False)
            await pair.migrate()
            assert "failed" == await pair.source.wait(FINAL, timeout_s=10)
            assert paths.SRC_BROKEN_FAILED == pair.source.source_path()
            info = await pair.source.execute("query-migrate")
            assert "not reconnected within 800 ms" in info["error-desc"]
            assert pair.source.source.reconnect.attempts >= 2  # it kept trying, with backoff
            assert await pair.source.runs()
            await pair.source.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_a_recover_channel_for_a_migration_that_did_not_ask_is_refused(run, tmp):
    """x-precopy-resume-ms 0 on the source: the destination discards at the cut, and nothing
    can take the migration up again."""

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            no_resume = {**SLOW, "x-precopy-resume-ms": 0}
            await pair.source.execute("migrate-set-parameters", no_resume)
            pair.fault(type="cut", direction="main", after_bytes=2 << 20)
            await pair.migrate()
            assert "failed" == await pair.source.wait(FINAL)
            assert "failed" == await pair.dest.wait({"failed"})
            assert not pair.dest.record.config or "x-precopy-resume" not in (
                pair.dest.record.config.capabilities
            )
            assert not pair.dest.vmm.incoming.ledger.recoverable(pair.dest.record.migration_id)
        finally:
            await pair.close()

    run(main)
