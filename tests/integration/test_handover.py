"""docs/handover.md's failure table, in process: one test per row a single loop can stage.

Faults come from a fault proxy on the migration path (cuts and stalls at exact frames) and from
closing a daemon (as a killed process: its connections drop, it decides nothing). Rows that
need a real signal (SIGSTOP) stay in tests/e2e. Every test checks where the VM runs, that it
runs on one side only, that its state equals the replay, and the paths both machines took.
"""

from __future__ import annotations

from tests.helpers.inproc import FINAL, make_pair, start_daemon
from tests.integration import paths

SLOW_PEER = {"x-peer-timeout-ms": 5000}


async def _runs_only_on(winner, loser) -> None:
    assert await winner.runs(), f"the VM does not run on {winner.name}"
    assert not await loser.runs(), f"the VM also runs on {loser.name}"
    await winner.assert_matches_replay()


SHORT_RESUME = {"x-precopy-resume-ms": 500}  # precopy resume tries, then gives up: rows 2, 3, 6


def test_row2_destination_killed_during_precopy(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            params = {"max-bandwidth": 2 << 20, **SHORT_RESUME}
            await pair.source.execute("migrate-set-parameters", params)
            await pair.migrate()
            await pair.dest.wait({"active"})
            await pair.dest.close()

            assert "failed" == await pair.source.wait(FINAL)
            assert paths.SRC_BROKEN_FAILED == pair.source.source_path()
            info = await pair.source.execute("query-migrate")
            assert "not reconnected within 500 ms" in info["error-desc"]
            assert info["x-precopy-breaks"] == 1
            assert await pair.source.runs()
            await pair.source.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_row3_source_killed_during_precopy_the_destination_discards(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await pair.dest.execute("migrate-set-parameters", SHORT_RESUME)
            await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 2 << 20})
            await pair.migrate()
            await pair.dest.wait({"active"})
            await pair.source.close()

            assert "failed" == await pair.dest.wait({"failed"})
            assert paths.DST_BROKEN_DISCARDED == pair.dest.dest_path()
            info = await pair.dest.execute("query-migrate")
            assert "did not reconnect within 500 ms" in info["error-desc"]
            assert not await pair.dest.runs()  # the killed host had the only copy
        finally:
            await pair.close()

    run(main)


def test_row6_source_killed_after_stop_with_an_incomplete_stream(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await pair.dest.execute("migrate-set-parameters", SHORT_RESUME)
            await pair.migrate(pause_before_switchover=True)
            await pair.source.wait({"pre-switchover"})
            await pair.source.close()

            # The destination cannot tell that the source had stopped (SWITCHOVER_START had
            # not left): it keeps the copy for a reconnection that never comes, then discards.
            assert "failed" == await pair.dest.wait({"failed"})
            assert paths.DST_BROKEN_DISCARDED == pair.dest.dest_path()
            assert not await pair.dest.runs()
        finally:
            await pair.close()

    run(main)


def test_row7_source_killed_after_loaded_the_operator_commits_the_held_copy(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            fault = pair.fault(type="stall", direction="return", before_frame="LOADED")
            await pair.migrate()
            await pair.proxy.wait_fired(fault, 10)
            await pair.source.close()

            assert "in-doubt" == await pair.dest.wait({"in-doubt"})
            assert paths.DST_HELD == pair.dest.dest_path()
            assert not await pair.dest.runs()  # held: the source might have resumed
            await pair.dest.execute("x-migrate-incoming-resolve", {"action": "commit"})

            assert "completed" == await pair.dest.status()
            assert paths.DST_HELD_OPERATOR_COMMIT == pair.dest.dest_path()
            assert await pair.dest.runs()
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_row9_cut_before_handover_arrives_resolves_to_the_destination(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            pair.fault(type="cut", before_frame="HANDOVER")
            await pair.migrate()

            # In doubt; RESOLVE finds the destination holding the VM in doubt: HANDOVER again.
            assert "completed" == await pair.source.wait(FINAL)
            assert "completed" == await pair.dest.wait({"completed"})
            assert paths.SRC_IN_DOUBT_COMMITTED == pair.source.source_path()
            assert paths.DST_HELD_COMMITTED == pair.dest.dest_path()
            await _runs_only_on(pair.dest, pair.source)
        finally:
            await pair.close()

    run(main)


def test_row10_cut_before_resumed_arrives_resolves_to_the_destination(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            pair.fault(type="cut", before_frame="RESUMED")
            await pair.migrate()

            assert "completed" == await pair.source.wait(FINAL)
            assert paths.SRC_IN_DOUBT_COMMITTED == pair.source.source_path()
            assert paths.DST_COMMITTED == pair.dest.dest_path()
            await _runs_only_on(pair.dest, pair.source)
        finally:
            await pair.close()

    run(main)


def test_row11_destination_killed_after_handover_sent_a_restarted_one_knows_nothing(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            port = int(pair.dest.incoming_uri.rsplit(":", 1)[1])
            fault = pair.fault(type="stall", direction="main", before_frame="HANDOVER")
            await pair.migrate()
            await pair.proxy.wait_fired(fault, 10)
            await pair.dest.close()  # it never saw HANDOVER
            assert "in-doubt" == await pair.source.wait({"in-doubt"})
            pair.proxy.release()

            restarted = await start_daemon(tmp, incoming=f"tcp:127.0.0.1:{port}")
            pair.others.append(restarted)
            assert "failed" == await pair.source.wait(FINAL)
            assert paths.SRC_IN_DOUBT_DISCARDED == pair.source.source_path()
            info = await pair.source.execute("query-migrate")
            assert "reports the migration unknown" in info["error-desc"]
            assert await pair.source.runs()
            await pair.source.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_row11_with_no_destination_at_all_the_operator_resumes(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            fault = pair.fault(type="stall", direction="main", before_frame="HANDOVER")
            await pair.migrate()
            await pair.proxy.wait_fired(fault, 10)
            await pair.dest.close()
            assert "in-doubt" == await pair.source.wait({"in-doubt"})
            assert not await pair.source.runs()  # never resumed by itself after HANDOVER

            await pair.source.execute("x-migrate-resolve", {"action": "resume"})
            assert "failed" == await pair.source.status()
            assert paths.SRC_IN_DOUBT_OPERATOR_RESUME == pair.source.source_path()
            assert await pair.source.runs()
            await pair.source.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_row12_source_killed_after_handover_the_destination_runs(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            fault = pair.fault(type="stall", direction="return", before_frame="RESUMED")
            await pair.migrate()
            await pair.proxy.wait_fired(fault, 10)
            await pair.source.close()

            assert "completed" == await pair.dest.wait({"completed"})
            assert paths.DST_COMMITTED == pair.dest.dest_path()
            assert await pair.dest.runs()
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_the_operator_completes_a_handover_the_destination_cannot_confirm(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            fault = pair.fault(type="cut", before_frame="RESUMED")
            await pair.migrate()
            await pair.source.wait({"active", "device"})
            pair.fault(type="refuse")  # and no resolve connection gets through
            await pair.proxy.wait_fired(fault, 10)
            assert "in-doubt" == await pair.source.wait({"in-doubt"})

            await pair.source.execute("x-migrate-resolve", {"action": "complete"})
            assert "completed" == await pair.source.status()
            assert paths.SRC_IN_DOUBT_OPERATOR_COMPLETE == pair.source.source_path()
            await _runs_only_on(pair.dest, pair.source)
        finally:
            await pair.close()

    run(main)


def test_a_source_shut_down_in_doubt_decides_nothing(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            fault = pair.fault(type="cut", before_frame="RESUMED")
            await pair.migrate()
            await pair.source.wait({"active", "device"})
            pair.fault(type="refuse")
            await pair.proxy.wait_fired(fault, 10)
            assert "in-doubt" == await pair.source.wait({"in-doubt"})
            source = pair.source.source

            await pair.source.close()
            assert paths.SRC_SHUTDOWN_IN_DOUBT == source.status.history
            assert "completed" == await pair.dest.status()  # the destination runs it
        finally:
            await pair.close()

    run(main)
