"""`migrate_cancel` in every status (QEMU: cancelling, then cancelled, the VM runs on).

Before HANDOVER a cancel resumes the VM on the source and the destination discards what it
received (ABORT); from HANDOVER on it is refused (docs/handover.md row 17); with nothing
running it is a no-op.
"""

from __future__ import annotations

import pytest

from netio import QMPCommandError
from tests.helpers.inproc import FINAL, make_pair
from tests.integration import paths

SLOW_PEER = {"x-peer-timeout-ms": 5000}  # a stalled peer must not time out during the test


async def _cancel_and_check(pair, expected_source, expected_dest) -> None:
    await pair.source.execute("migrate_cancel")
    assert "cancelled" == await pair.source.wait(FINAL)
    assert "failed" == await pair.dest.wait({"failed"})
    assert expected_source == pair.source.source_path()
    assert expected_dest == pair.dest.dest_path()
    info = await pair.source.execute("query-migrate")
    assert "error-desc" not in info  # QEMU: a cancel is not an error
    assert await pair.source.runs()
    assert not await pair.dest.runs()
    await pair.source.assert_matches_replay()


def test_cancel_with_nothing_running_is_a_no_op(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            assert {} == await pair.source.execute("migrate_cancel")
            assert "none" == await pair.source.status()
        finally:
            await pair.close()

    run(main)


def test_cancel_in_setup(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        pair.dest.vmm.build_delay_s = 5.0  # the destination prepares its RAM for a long time
        try:
            await pair.migrate()
            assert "setup" == await pair.dest.wait({"setup"})
            assert "setup" == await pair.source.status()
            await _cancel_and_check(
                pair, paths.SRC_CANCELLED_IN_SETUP, paths.DST_DISCARDED_IN_SETUP
            )
        finally:
            await pair.close()

    run(main)


def test_cancel_while_active(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 1 << 20})
            await pair.migrate()
            assert "active" == await pair.source.wait({"active"})
            await _cancel_and_check(pair, paths.SRC_CANCELLED_ACTIVE, paths.DST_DISCARDED_ACTIVE)
        finally:
            await pair.close()

    run(main)


def test_cancel_in_pre_switchover(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await pair.migrate(pause_before_switchover=True)
            assert "pre-switchover" == await pair.source.wait({"pre-switchover"})
            await _cancel_and_check(pair, paths.SRC_CANCELLED_PAUSED, paths.DST_DISCARDED_ACTIVE)
        finally:
            await pair.close()

    run(main)


def test_cancel_in_device_before_handover_releases_the_loaded_copy(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            for daemon in (pair.source, pair.dest):
                await daemon.execute("migrate-set-parameters", SLOW_PEER)
            fault = pair.fault(type="stall", direction="return", before_frame="LOADED")
            await pair.migrate()
            await pair.proxy.wait_fired(fault, 10)
            assert "device" == await pair.source.status()
            await _cancel_and_check(pair, paths.SRC_CANCELLED_DEVICE, paths.DST_DISCARDED_LOADED)
        finally:
            await pair.close()

    run(main)


def test_cancel_after_handover_was_sent_is_refused(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            for daemon in (pair.source, pair.dest):
                await daemon.execute("migrate-set-parameters", SLOW_PEER)
            fault = pair.fault(type="stall", direction="return", before_frame="RESUMED")
            await pair.migrate()
            await pair.proxy.wait_fired(fault, 10)
            with pytest.raises(QMPCommandError, match="being handed over"):
                await pair.source.execute("migrate_cancel")

            pair.proxy.release()
            assert "completed" == await pair.source.wait(FINAL)
            assert paths.SRC_COMPLETED == pair.source.source_path()
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


@pytest.mark.parametrize("ending", ["completed", "failed", "cancelled"])
def test_cancel_after_the_end_changes_nothing(run, tmp, ending):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            if ending == "failed":
                await pair.dest.close()
                await pair.migrate()
            elif ending == "cancelled":
                await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 1 << 20})
                await pair.migrate()
                await pair.source.wait({"active"})
                await pair.source.execute("migrate_cancel")
            else:
                await pair.migrate()
            assert ending == await pair.source.wait(FINAL)
            before = pair.source.source_path()

            assert {} == await pair.source.execute("migrate_cancel")
            assert ending == await pair.source.status()
            assert before == pair.source.source_path()
        finally:
            await pair.close()

    run(main)
