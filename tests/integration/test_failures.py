"""Migrations that fail before HANDOVER: the VM always resumes on the source, nothing is lost.

One test per status a failure can come in (setup, active, pre-switchover, device), a stop that a
change-state handler refuses, a device that cannot be saved, and a digest that differs; plus
the daemon shutting down in each status, which decides nothing (docs/handover.md).
"""

from __future__ import annotations

import pytest

from tests.helpers.inproc import FINAL, make_pair, small_vm, start_daemon
from tests.integration import paths
from vmsim import HookError


async def _source_resumed(pair, expected_path) -> None:
    assert "failed" == await pair.source.wait(FINAL)
    assert expected_path == pair.source.source_path()
    info = await pair.source.execute("query-migrate")
    assert info["error-desc"]
    assert await pair.source.runs()
    assert not pair.dest.closed
    assert not await pair.dest.runs()
    await pair.source.assert_matches_replay()


def test_a_refused_connection_fails_in_setup(run, tmp):
    async def main() -> None:
        source = await start_daemon(tmp, vm=small_vm(), incoming=None)
        nobody = await start_daemon(tmp)
        uri = nobody.incoming_uri
        await nobody.close()  # nothing listens there any more
        try:
            await source.execute("migrate", {"uri": uri})
            assert "failed" == await source.wait(FINAL)
            assert paths.SRC_FAILED_IN_SETUP == source.source_path()
            info = await source.execute("query-migrate")
            assert "refused" in info["error-desc"].lower()
            assert await source.runs()
        finally:
            await source.close()

    run(main)


def test_a_cut_during_precopy_fails_and_the_destination_discards(run, tmp):
    """Without precopy resume (x-precopy-resume-ms 0, QEMU's behaviour) a cut fails at once."""

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            # Slow enough that the cut surely comes while precopy still runs.
            no_resume = {"max-bandwidth": 4 << 20, "x-precopy-resume-ms": 0}
            await pair.source.execute("migrate-set-parameters", no_resume)
            pair.fault(type="cut", direction="main", after_bytes=1 << 20)
            await pair.migrate()
            await _source_resumed(pair, paths.SRC_FAILED_ACTIVE)
            assert "failed" == await pair.dest.wait({"failed"})
            assert paths.DST_DISCARDED_ACTIVE == pair.dest.dest_path()

            await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 0})
            await pair.migrate()  # the cut was one-shot: a retry goes through
            assert "completed" == await pair.source.wait(FINAL)
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_the_destination_gone_in_pre_switchover_fails_and_resumes(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await pair.migrate(pause_before_switchover=True)
            await pair.source.wait({"pre-switchover"})
            await pair.dest.close()  # killed: its connection drops
            assert "failed" == await pair.source.wait(FINAL)
            assert paths.SRC_FAILED_PAUSED == pair.source.source_path()
            assert await pair.source.runs()
            await pair.source.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_a_cut_after_loaded_fails_and_the_abort_releases_the_held_copy(run, tmp):
    """Rows 4 and 8: the source never saw LOADED, so it never sent HANDOVER: it resumes."""

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            pair.fault(type="cut", before_frame="LOADED")
            await pair.migrate()
            await _source_resumed(pair, paths.SRC_FAILED_DEVICE)
            # The destination discards its complete copy on the source's ABORT, sent on a resolve
            # connection. Whether it noticed the cut main connection first (and held the copy in
            # doubt meanwhile) depends on which connection its loop reads first: both paths end
            # with the copy discarded, never run.
            assert "failed" == await pair.dest.wait({"failed"})
            assert pair.dest.dest_path() in (paths.DST_HELD_DISCARDED, paths.DST_DISCARDED_LOADED)
        finally:
            await pair.close()

    run(main)


def test_a_digest_mismatch_fails_before_handover(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            original = pair.dest.vmm.build_machine

            async def corrupted(config):
                machine = await original(config)
                machine.ram_handler.load_cleanup = _corrupt_at_the_end(machine)
                return machine

            pair.dest.vmm.build_machine = corrupted  # a destination that loads wrong bytes
            await pair.migrate()
            await _source_resumed(pair, paths.SRC_FAILED_DEVICE)
            info = await pair.source.execute("query-migrate")
            assert "state digest mismatch" in info["error-desc"]
            assert "failed" == await pair.dest.wait({"failed"})
            assert paths.DST_DISCARDED_LOADED == pair.dest.dest_path()
        finally:
            await pair.close()

    run(main)


def _corrupt_at_the_end(machine):
    def load_cleanup() -> None:
        machine.ram.array[7] ^= 0xFF  # one flipped byte once loaded: only the digest can tell

    return load_cleanup


def test_a_refusing_change_state_handler_fails_the_stop_and_the_vm_runs_on(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:

            def refuse(running: bool, state: object) -> None:
                del state
                if not running:
                    msg = "the backend cannot quiesce"
                    raise HookError(msg)

            machine = pair.source.vmm.vm.machine
            handle = machine.runstate.add_change_state_handler(refuse, name="backend")
            await pair.migrate()
            await _source_resumed(pair, paths.SRC_FAILED_ACTIVE)
            info = await pair.source.execute("query-migrate")
            assert "the backend cannot quiesce" in info["error-desc"]

            handle.remove()
            await pair.migrate()  # without it, the next migration goes through
            assert "completed" == await pair.source.wait(FINAL)
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("setup", paths.SRC_SHUTDOWN_IN_SETUP),
        ("active", paths.SRC_SHUTDOWN_ACTIVE),
        ("pre-switchover", paths.SRC_SHUTDOWN_PAUSED),
        ("device", paths.SRC_SHUTDOWN_DEVICE),
    ],
)
def test_a_source_shut_down_mid_migration_decides_nothing(run, tmp, status, expected):
    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            await pair.source.execute("migrate-set-parameters", {"x-peer-timeout-ms": 5000})
            if status == "setup":
                pair.dest.vmm.build_delay_s = 5.0
            elif status == "active":
                await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 1 << 20})
            elif status == "device":
                pair.fault(type="stall", direction="return", before_frame="LOADED")
            await pair.migrate(pause_before_switchover=status == "pre-switchover")
            await pair.source.wait({status})
            source = pair.source.source

            await pair.source.close()
            assert expected == source.status.history
            assert "the daemon shut down during the migration" == source.metrics.error_desc
        finally:
            await pair.close()

    run(main)
