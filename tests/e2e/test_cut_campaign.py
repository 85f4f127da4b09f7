"""A randomised campaign: cut the migration connection at a random byte offset, check the rule.

Each run draws (from a seed) a direction and a byte offset, cuts the connection exactly there with
the fault proxy, lets the migration end, settles an in-doubt side with `livemig resolve`, and then
checks that the VM runs on exactly one side with the replay's state, and that a retry succeeds.

The postcopy campaign does the same to a migration switched to postcopy at once: a cut before
POSTCOPY_RUN fails it (the VM resumes at the source), a cut after it pauses both sides and
`x-auto-recover` takes it up again, with no operator step.

CI runs a handful; run it longer by hand:

    LIVEMIG_CAMPAIGN_RUNS=200 LIVEMIG_CAMPAIGN_SEED=7 scripts/test tests/e2e/test_cut_campaign.py
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import TYPE_CHECKING

import pytest

from livemig.resolve import resolve
from tests.e2e.conftest import FINAL, assert_matches_replay, qmp, stopped_vm, wait_status
from tests.helpers.outcomes import OUTCOMES
from tests.helpers.rig import RESOLVED, Rig, make_rig, runs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from livemig.daemons import DaemonProcess

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(120)]

RUNS = int(os.environ.get("LIVEMIG_CAMPAIGN_RUNS", "6"))
SEED = int(os.environ.get("LIVEMIG_CAMPAIGN_SEED", "20261124"))
MAIN_STREAM_BYTES = 80 * 1024 * 1024  # a 64 MiB busy VM sends about this much
RETURN_PATH_BYTES = 600  # header, OPEN_ACK, PONGs, LOADED, RESUMED


@pytest.fixture
async def rig(daemons: Callable[..., DaemonProcess]) -> AsyncIterator[Rig]:
    """Source and destination with a fault proxy between them."""
    async for value in make_rig(daemons):
        yield value


def draw(run: int) -> tuple[str, int]:
    """The run's cut: a direction and a byte offset, from the campaign seed."""
    rng = random.Random(SEED * 1000 + run)
    if rng.random() < 0.75:
        return "main", rng.randrange(0, MAIN_STREAM_BYTES)
    return "return", rng.randrange(0, RETURN_PATH_BYTES)


async def settle(rig: Rig) -> str:
    """Wait for the end, let in-doubt resolve itself, else run `livemig resolve`."""
    source_status = await rig.wait(rig.source, {*RESOLVED, "in-doubt"}, timeout_s=60)
    for _ in range(40):
        statuses = {await rig.status(rig.source), await rig.status(rig.dest)}
        if "in-doubt" not in statuses and not statuses & {"setup", "active"}:
            return source_status if source_status != "in-doubt" else await rig.status(rig.source)
        await asyncio.sleep(0.25)
    await resolve(rig.source.qmp_address, rig.dest.qmp_address, source_dead=False, dest_dead=False)
    return "in-doubt, settled by livemig resolve"


@pytest.mark.parametrize("run", range(RUNS))
async def test_cut_at_a_random_byte(rig: Rig, run: int) -> None:
    direction, offset = draw(run)
    rig.fault(type="cut", direction=direction, after_bytes=offset)
    await rig.start_migration()

    outcome = await settle(rig)

    on_source, on_dest = await runs(rig.source), await runs(rig.dest)
    runs_on = {(True, False): "source", (False, True): "dest", (True, True): "both"}
    OUTCOMES.record(
        "cut campaign",
        cut=f"{direction}@{offset}",
        outcome=outcome,
        vm_runs_on=runs_on.get((on_source, on_dest), "nowhere"),
    )
    assert on_source != on_dest, f"cut {direction}@{offset} ({outcome}): runs on both or neither"
    winner = rig.source if on_source else rig.dest
    async with qmp(winner) as client:
        assert_matches_replay(await stopped_vm(client))
        await client.execute("cont")
    if on_source:  # the cut was one-shot: a retry goes through
        await rig.start_migration()
        async with qmp(rig.source) as client:
            assert "completed" == (await wait_status(client, FINAL))["status"]


POSTCOPY_MAIN_BYTES = 72 * 1024 * 1024  # the 64 MiB guest, pushed whole after the switch
POSTCOPY_RETURN_BYTES = 4096  # OPEN_ACK, PONGs, page requests, LOADED, RESUMED


def draw_postcopy(run: int) -> tuple[str, int]:
    """The postcopy run's cut: a direction and a byte offset, from the campaign seed."""
    rng = random.Random(SEED * 1000 + 500 + run)
    if rng.random() < 0.75:
        return "main", rng.randrange(0, POSTCOPY_MAIN_BYTES)
    return "return", rng.randrange(0, POSTCOPY_RETURN_BYTES)


@pytest.mark.parametrize("run", range(RUNS))
async def test_cut_at_a_random_byte_in_postcopy(rig: Rig, run: int) -> None:
    direction, offset = draw_postcopy(run)
    rig.fault(type="cut", direction=direction, after_bytes=offset)
    await rig.start_migration(postcopy=True)

    outcome = await rig.wait(rig.source, set(RESOLVED), timeout_s=60)

    on_source, on_dest = await runs(rig.source), await runs(rig.dest)
    runs_on = {(True, False): "source", (False, True): "dest", (True, True): "both"}
    OUTCOMES.record(
        "postcopy cut campaign",
        cut=f"{direction}@{offset}",
        outcome=outcome,
        vm_runs_on=runs_on.get((on_source, on_dest), "nowhere"),
    )
    assert on_source != on_dest, f"cut {direction}@{offset} ({outcome}): runs on both or neither"
    assert outcome == ("failed" if on_source else "completed")
    winner = rig.source if on_source else rig.dest
    async with qmp(winner) as client:
        assert_matches_replay(await stopped_vm(client))
