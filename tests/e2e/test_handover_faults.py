"""docs/handover.md's failure table, one test per row, against real daemons through a fault proxy.

Every test checks the rule: afterwards (and after the documented resolution, where the table says
so) the VM runs on exactly one side, with exactly the state a replay that never moved has.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

import pytest

from livemig.resolve import resolve
from netio import QMPClientError
from tests.e2e.conftest import FINAL, assert_matches_replay, qmp, stopped_vm, wait_status
from tests.helpers.rig import (
    RESOLVED,
    Rig,
    assert_runs_only_on,
    make_rig,
    runs,
    wait_active_with_data,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from livemig.daemons import DaemonProcess


@pytest.fixture
async def rig(daemons: Callable[..., DaemonProcess]) -> AsyncIterator[Rig]:
    """Source (busy 64 MiB VM) and destination, with a fault proxy on the migration path."""
    async for value in make_rig(daemons):
        yield value


pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(120)]

# -- rows 1-3: faults during setup or precopy ------------------------------------------------


async def test_row1_cut_during_precopy_then_retry_succeeds(rig: Rig) -> None:
    """Without precopy resume (x-precopy-resume-ms 0, QEMU's behaviour) the cut fails it."""
    for daemon in (rig.source, rig.dest):
        async with qmp(daemon) as client:
            await client.execute("migrate-set-parameters", {"x-precopy-resume-ms": 0})
    rig.fault(type="cut", direction="main", after_bytes=8 * 1024 * 1024)
    await rig.start_migration()

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    assert "failed" == await rig.wait(rig.dest, {"failed"})
    assert await runs(rig.source)
    assert not await runs(rig.dest)

    await rig.start_migration()  # the cut was one-shot: the retry goes through
    assert "completed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.dest, rig.source)


async def test_row1_cut_during_precopy_resumes_by_itself(rig: Rig) -> None:
    """With precopy resume (on by default) the source reconnects and the migration goes on."""
    rig.fault(type="cut", direction="main", after_bytes=8 * 1024 * 1024)
    await rig.start_migration()

    assert "completed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.dest, rig.source)
    async with qmp(rig.source) as client:
        assert (await client.execute("query-migrate"))["x-precopy-breaks"] == 1


async def test_row2_destination_killed_during_precopy(rig: Rig) -> None:
    await rig.start_migration()
    await wait_active_with_data(rig)
    rig.dest.signal(signal.SIGKILL)

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row3_source_killed_during_precopy(rig: Rig) -> None:
    await rig.start_migration()
    await wait_active_with_data(rig)
    rig.source.signal(signal.SIGKILL)

    assert "failed" == await rig.wait(rig.dest, {"failed"})
    assert not await runs(rig.dest)  # the VM died with its only complete copy


# -- rows 4-8: after the stop, before HANDOVER ------------------------------------------------


async def test_rows4_8_cut_after_loaded_was_sent_source_resumes_dest_discards(rig: Rig) -> None:
    rig.fault(type="cut", before_frame="LOADED")
    await rig.start_migration()

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    # The destination held a complete copy in doubt; the source's ABORT releases it.
    assert "failed" == await rig.wait(rig.dest, {"failed"})
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row5_destination_killed_after_stop(rig: Rig) -> None:
    await rig.start_migration(pause_before_switchover=True)
    await rig.wait(rig.source, {"pre-switchover"})
    rig.dest.signal(signal.SIGKILL)
    async with qmp(rig.source) as client:
        # The source may notice the dead peer first and fail before the continue: either way.
        with contextlib.suppress(QMPClientError):
            await client.execute("migrate-continue", {"state": "pre-switchover"})

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row6_source_killed_after_stop_with_an_incomplete_stream(rig: Rig) -> None:
    await rig.start_migration(pause_before_switchover=True)
    await rig.wait(rig.source, {"pre-switchover"})
    rig.source.signal(signal.SIGKILL)

    assert "failed" == await rig.wait(rig.dest, {"failed"})
    assert not await runs(rig.dest)  # incomplete: discarded (the killed host had the only copy)


async def test_row7_source_killed_after_loaded_dest_resolves_with_source_dead(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="LOADED")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.source.signal(signal.SIGKILL)

    assert "in-doubt" == await rig.wait(rig.dest, {"in-doubt"})
    assert not await runs(rig.dest)
    actions = await resolve(None, rig.dest.qmp_address, source_dead=True, dest_dead=False)

    assert ["dest: x-migrate-incoming-resolve {action: commit}"] == actions
    assert await runs(rig.dest)
    async with qmp(rig.dest) as client:
        assert_matches_replay(await stopped_vm(client))


# -- rows 9-12: around HANDOVER -----------------------------------------------------------------


async def test_row9_cut_before_handover_arrives_resolves_to_destination(rig: Rig) -> None:
    rig.fault(type="cut", before_frame="HANDOVER")
    await rig.start_migration()

    # In doubt, then the source's RESOLVE finds the destination in doubt and hands over again.
    assert "completed" == await rig.wait(rig.source, RESOLVED)
    assert "completed" == await rig.wait(rig.dest, {"completed"})
    await assert_runs_only_on(rig.dest, rig.source)


async def test_row10_cut_before_resumed_arrives_resolves_to_destination(rig: Rig) -> None:
    rig.fault(type="cut", before_frame="RESUMED")
    await rig.start_migration()

    assert "completed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.dest, rig.source)


async def test_row11_destination_killed_after_handover_sent_source_resolves(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="HANDOVER")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.dest.signal(signal.SIGKILL)

    assert "in-doubt" == await rig.wait(rig.source, {"in-doubt"})
    assert not await runs(rig.source)  # never resumes by itself after HANDOVER
    actions = await resolve(rig.source.qmp_address, None, source_dead=False, dest_dead=True)

    assert ["source: x-migrate-resolve {action: resume}"] == actions
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row12_source_killed_after_handover_arrived(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="RESUMED")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.source.signal(signal.SIGKILL)

    assert "completed" == await rig.wait(rig.dest, {"completed"})
    assert await runs(rig.dest)
    async with qmp(rig.dest) as client:
        assert_matches_replay(await stopped_vm(client))


# -- rows 13-15: stalled peers --------------------------------------------------------------


async def test_row13_source_stalled_during_precopy(rig: Rig) -> None:
    await rig.start_migration()
    await wait_active_with_data(rig)
    rig.source.signal(signal.SIGSTOP)
    assert "failed" == await rig.wait(rig.dest, {"failed"})  # peer timeout: discarded
    rig.source.signal(signal.SIGCONT)

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row14_destination_stalled_during_precopy(rig: Rig) -> None:
    await rig.start_migration()
    await wait_active_with_data(rig)
    rig.dest.signal(signal.SIGSTOP)
    assert "failed" == await rig.wait(rig.source, RESOLVED)  # peer timeout: resumed
    rig.dest.signal(signal.SIGCONT)

    assert "failed" == await rig.wait(rig.dest, {"failed"})
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row15_destination_stalled_after_handover_arrived(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="HANDOVER")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.dest.signal(signal.SIGSTOP)
    rig.proxy.release()  # HANDOVER lands in the stopped destination's socket buffer

    assert "in-doubt" == await rig.wait(rig.source, {"in-doubt"})
    rig.dest.signal(signal.SIGCONT)

    assert "completed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.dest, rig.source)


async def test_postcopy_destination_stopped_before_it_read_the_switch(rig: Rig) -> None:
    """POSTCOPY_LISTEN..RUN land, unread, in a stopped destination's socket; past the timeouts
    it wakes: the switch was no silence, so it runs the guest and recovers (x-auto-recover).

    Found by CI (fault matrix, pause-dest x postcopy): on waking, the destination's timer ran
    before its read, called the source silent, and discarded a stream whose RUN was waiting;
    the paused source then had no copy to recover and the VM ran nowhere.
    """
    fault = rig.fault(type="stall", direction="main", before_frame="POSTCOPY_LISTEN")
    await rig.start_migration(postcopy=True)
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.dest.signal(signal.SIGSTOP)
    rig.proxy.release()
    assert "postcopy-paused" == await rig.wait(rig.source, {"postcopy-paused"})  # 2 s timeout
    await asyncio.sleep(1.5)  # the destination's own peer timeout passes while it is stopped
    rig.dest.signal(signal.SIGCONT)

    assert "completed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.dest, rig.source)


# -- row 17: cancel once the VM is being handed over ------------------------------------------


async def test_row17_cancel_after_handover_sent_is_refused(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="HANDOVER")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    async with qmp(rig.source) as client:
        with pytest.raises(QMPClientError, match="being handed over"):
            await client.execute("migrate_cancel")
    rig.proxy.release()

    assert "completed" == await rig.wait(rig.source, FINAL)
    await assert_runs_only_on(rig.dest, rig.source)


# -- row 16 and regressions found in review ---------------------------------------------------


async def test_row16_cancel_while_the_destination_holds_a_complete_copy(rig: Rig) -> None:
    """Cancel in `device` after the destination loaded everything, before HANDOVER: the source
    resumes and its ABORT makes the destination discard the copy it was holding."""
    fault = rig.fault(type="stall", before_frame="LOADED")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    async with qmp(rig.source) as client:
        await client.execute("migrate_cancel")
    rig.proxy.release()

    assert "cancelled" == await rig.wait(rig.source, RESOLVED)
    assert "failed" == await rig.wait(rig.dest, {"failed"})
    await assert_runs_only_on(rig.source, rig.dest)


async def test_sigterm_of_the_source_during_handover_keeps_the_loaded_copy(rig: Rig) -> None:
    """A clean shutdown is no decision: the destination must hold its complete copy in doubt,
    not discard it, so that the VM survives (review finding A3)."""
    fault = rig.fault(type="stall", before_frame="LOADED")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.source.signal(signal.SIGTERM)
    assert 0 == rig.source.process.wait(timeout=10)

    assert "in-doubt" == await rig.wait(rig.dest, {"in-doubt"})
    await resolve(None, rig.dest.qmp_address, source_dead=True, dest_dead=False)
    assert await runs(rig.dest)
    async with qmp(rig.dest) as client:
        assert_matches_replay(await stopped_vm(client))


async def test_resolve_after_repeated_migrations_between_the_same_daemons(rig: Rig) -> None:
    """A->B, B->A, then A->B left in doubt: the destination's outcome for THAT migration decides,
    not its newest one, so the VM ends on exactly one side (review finding A1)."""
    await rig.start_migration()
    assert "completed" == await rig.wait(rig.source, RESOLVED)
    async with qmp(rig.source) as client:
        await client.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        address = (await client.execute("query-migrate"))["socket-address"][0]
    async with qmp(rig.dest) as client:
        await client.execute("migrate", {"uri": f"tcp:{address['host']}:{address['port']}"})
        assert "completed" == (await wait_status(client, FINAL))["status"]
    connections = rig.proxy.stats.connections_total
    rig.fault(type="cut", before_frame="RESUMED")
    await rig.start_migration()
    async with asyncio.timeout(10):
        while rig.proxy.stats.connections_total == connections:
            await asyncio.sleep(0.005)
    rig.fault(type="refuse")  # the source's own RESOLVE cannot get through: the operator must

    assert "in-doubt" == await rig.wait(rig.source, {"in-doubt"})
    actions = await resolve(
        rig.source.qmp_address, rig.dest.qmp_address, source_dead=False, dest_dead=False
    )
    assert ["source: x-migrate-resolve {action: complete}"] == actions
    await assert_runs_only_on(rig.dest, rig.source)


async def test_resolve_arrives_while_the_original_connection_is_still_open(rig: Rig) -> None:
    """The proxy drops only the source's side: the destination still sees its connection open
    and loaded when the source's RESOLVE arrives on a new one, and must hand over once."""
    rig.fault(type="cut", before_frame="HANDOVER", side="client")
    await rig.start_migration()

    assert "completed" == await rig.wait(rig.source, RESOLVED)
    assert "completed" == await rig.wait(rig.dest, {"completed"})
    await assert_runs_only_on(rig.dest, rig.source)
