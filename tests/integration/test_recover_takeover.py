"""A recover channel whose answer never comes, and the next one that takes over.

The source gives up on a recover channel whose answer does not come (the fault proxy stalls
it, as a partition or a stopped destination would) and opens another, which must take the
migration up, for a postcopy and for a precopy resume alike, the VM ending replay-equal at the
destination. (The race where the destination still drives the first one when the second
arrives is tested sans-IO: tests/unit/migration/test_dest_takeover.py.)
"""

from __future__ import annotations

from tests.helpers.inproc import FINAL, make_pair, small_vm


async def _takes_over(tmp, *, postcopy: bool) -> None:
    vm = small_vm(ram_mib=16, dirty_rate=400_000) if postcopy else small_vm()
    pair = await make_pair(tmp, proxy=True, vm=vm)
    try:
        answer = "RECV_BITMAP" if postcopy else "RESUME_POINT"
        if postcopy:
            pair.fault(type="cut", before_frame="REQ_PAGES")
            params = {"downtime-limit": 1, "max-postcopy-bandwidth": 8 << 20}
        else:
            pair.fault(type="cut", direction="main", after_bytes=2 << 20)
            params = {"max-bandwidth": 4 << 20}
        stall = pair.fault(type="stall", direction="return", before_frame=answer)
        await pair.source.execute("migrate-set-parameters", params)
        await pair.migrate(postcopy_ram=postcopy)
        if postcopy:
            await pair.source.execute("migrate-start-postcopy")
        await pair.proxy.wait_fired(stall, 10)
        await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 0})
        assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
        assert "completed" == await pair.dest.wait({"completed"}, timeout_s=10)
        assert not await pair.source.runs()
        await pair.dest.assert_matches_replay()
    finally:
        pair.proxy.release()
        await pair.close()


def test_a_second_recover_channel_takes_over_a_stalled_postcopy_recovery(run, tmp):
    run(lambda: _takes_over(tmp, postcopy=True), timeout_s=40)


def test_a_second_recover_channel_takes_over_a_stalled_precopy_resume(run, tmp):
    run(lambda: _takes_over(tmp, postcopy=False), timeout_s=40)
