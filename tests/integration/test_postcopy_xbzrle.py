"""x-postcopy-xbzrle: after the switch, the push goes as XBZRLE deltas from the destination's copy.

Beyond QEMU (which sends every page whole in postcopy). The `ab` guest changes one byte per
page, so its push is a few bytes per page; whatever order pages arrive in (requested ones whole,
pushed ones as deltas, a page both ways), the migrated VM equals a replay that never moved.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.inproc import FINAL, Pair, make_pair, small_vm
from tests.integration import paths
from tests.integration.test_postcopy import BUSY
from vmsim import PAGE_SIZE, WorkloadKind

RAM_MIB = 32
DELTAS = {"xbzrle": True, "postcopy_ram": True, "x_postcopy_xbzrle": True}
SLOW = {**BUSY, "max-bandwidth": 64 << 20}
"""XBZRLE passes are so small that precopy would converge: held to 64 MiB/s, it does not."""


async def switch_after_the_first_pass(pair: Pair) -> None:
    """Migrate with deltas after the switch, and switch once every page was sent (and cached)."""
    await pair.migrate(**DELTAS)
    for _ in range(2000):
        info = await pair.source.execute("query-migrate")
        assert isinstance(info, dict)
        if info.get("ram", {}).get("dirty-sync-count", 0) >= 2:  # the first pass is over
            await pair.source.execute("migrate-start-postcopy")
            return
        await asyncio.sleep(0.005)
    pytest.fail("the first pass did not end in 10 s")


@pytest.mark.parametrize("cache_mib", [64, 8])  # a cache for all RAM, and one pages share
def test_the_push_goes_as_deltas_and_matches_the_replay(run, tmp, cache_mib):
    async def main() -> None:
        vm = small_vm(ram_mib=RAM_MIB, workload=WorkloadKind.AB, dirty_rate=400_000)
        pair = await make_pair(tmp, vm=vm)
        try:
            await pair.source.execute(
                "migrate-set-parameters", {**SLOW, "xbzrle-cache-size": cache_mib << 20}
            )
            await switch_after_the_first_pass(pair)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
            assert "completed" == await pair.dest.wait({"completed"}, timeout_s=30)
            assert paths.SRC_POSTCOPY_COMPLETED == paths.collapsed(pair.source.source_path())
            await pair.dest.assert_matches_replay()

            metrics = pair.source.source.metrics
            missing_bytes = metrics.postcopy_missing_pages * PAGE_SIZE
            info = await pair.source.execute("query-migrate")
            assert isinstance(info, dict)
            postcopy_bytes = info["ram"]["postcopy-bytes"]
            if cache_mib == 64:  # every pushed page was cached: a few bytes each (asked: whole)
                assert postcopy_bytes < missing_bytes / 2, (postcopy_bytes, missing_bytes)
            # else: four pages share each slot, so whichever was sent last is the one cached
            assert info["xbzrle-cache"]["pages"] > 0
        finally:
            await pair.close()

    run(main)


def test_a_cut_in_a_delta_push_recovers_and_matches_the_replay(run, tmp):
    """The pages that did not arrive still hold the copy the deltas were made against."""

    async def main() -> None:
        vm = small_vm(ram_mib=16, workload=WorkloadKind.AB, dirty_rate=400_000)
        pair = await make_pair(tmp, proxy=True, vm=vm)
        try:
            pair.fault(type="cut", before_frame="REQ_PAGES")
            await pair.source.execute("migrate-set-parameters", SLOW)
            await switch_after_the_first_pass(pair)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
            assert "completed" == await pair.dest.wait({"completed"}, timeout_s=30)
            assert paths.SRC_POSTCOPY_RECOVERED == paths.collapsed(pair.source.source_path())
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_the_capability_needs_postcopy_and_xbzrle(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            with pytest.raises(Exception, match="requires postcopy-ram and xbzrle"):
                await pair.migrate(postcopy_ram=True, x_postcopy_xbzrle=True)
        finally:
            await pair.close()

    run(main)
