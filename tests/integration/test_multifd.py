"""Multifd: pages on several channels, device state on the main one, and the digest still equal.

Each migration here runs both daemons in one process over real sockets and compares the
migrated VM with a replay that never moved.
"""

from __future__ import annotations

import asyncio
import zlib

import pytest

from migration.source_phases import AwaitingLoaded, Done
from tests.helpers.inproc import FINAL, Daemon, make_pair, small_vm
from tests.integration import paths
from vmm import workers
from vmm.fill_content import resolve_fill


async def enable(daemon: Daemon, capability: str) -> None:
    """`migrate-set-capabilities` with one capability on."""
    caps = [{"capability": capability, "state": True}]
    await daemon.execute("migrate-set-capabilities", {"capabilities": caps})


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_a_multifd_migration_completes_and_matches_the_replay(run, tmp, channels):
    async def main() -> None:
        pair = await make_pair(tmp, vm=small_vm(ram_mib=16))
        try:
            await pair.source.execute("migrate-set-parameters", {"multifd-channels": channels})
            await pair.migrate(multifd=True)
            assert "completed" == await pair.source.wait(FINAL)
            assert "completed" == await pair.dest.wait({"completed"})
            assert paths.SRC_COMPLETED == pair.source.source_path()
            assert paths.DST_COMMITTED == pair.dest.dest_path()
            await pair.dest.assert_matches_replay()

            metrics, received = pair.source.source.metrics, pair.dest.record.metrics
            multifd = pair.source.source.sender.multifd
            assert multifd is not None
            assert multifd.count == channels
            assert multifd.sent_bytes > 16 << 20  # every page went on a multifd channel
            assert received.normal_pages == metrics.normal_pages
            assert received.zero_pages == metrics.zero_pages
            assert received.received_bytes == metrics.transferred_bytes
        finally:
            await pair.close()

    run(main)


def test_multifd_spreads_the_pages_over_every_channel(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp, vm=small_vm(ram_mib=16))
        try:
            await pair.source.execute("migrate-set-parameters", {"multifd-channels": 3})
            await pair.migrate(multifd=True)
            await pair.source.wait(FINAL)
            multifd = pair.source.source.sender.multifd
            assert multifd is not None
            shares = [conn.sent_bytes / multifd.sent_bytes for conn in multifd.conns.values()]
            assert all(0.25 < share < 0.42 for share in shares), shares
        finally:
            await pair.close()

    run(main)


def test_multifd_to_a_file_is_refused_with_a_clear_error(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await enable(pair.source, "multifd")
            with pytest.raises(Exception, match="multifd is on, but a file: migration"):
                await pair.source.execute("migrate", {"uri": f"file:{tmp / 'vm.img'}"})
            assert await pair.source.runs()
        finally:
            await pair.close()

    run(main)


def test_device_state_waits_for_the_ram_still_on_multifd_channels(run, tmp):
    """The main stream outruns a stalled multifd channel: devices load only after its RAM.

    The ITS flushes its table into guest RAM when the VM stops and rebuilds its cache from RAM
    in post_load, so loading it before the final pages land would leave a stale cache (a
    digest mismatch). The final pages are held in the proxy while the main stream, with every
    device, reaches the destination.
    """

    async def main() -> None:
        pair = await make_pair(tmp, proxy=True)
        try:
            await pair.source.execute("migrate-set-parameters", {"multifd-channels": 2})
            await pair.migrate(multifd=True, pause_before_switchover=True)
            assert "pre-switchover" == await pair.source.wait({"pre-switchover"})
            assert pair.proxy is not None
            fault = pair.fault(type="stall", direction="main", before_frame="PAGES", once=False)
            await pair.source.execute("migrate-continue", {"state": "pre-switchover"})
            await pair.proxy.wait_fired(fault, 10)
            async with asyncio.timeout(10):  # the main stream left, every device in it
                while not isinstance(pair.source.source.phase, AwaitingLoaded | Done):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert not pair.dest.record.metrics.devices  # held: their RAM is not all here

            pair.proxy.release()
            assert "completed" == await pair.source.wait(FINAL)
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


@pytest.mark.parametrize("on_workers", [False, True], ids=["decode-on-loop", "decode-on-workers"])
@pytest.mark.parametrize("codec", ["zlib", "zstd"])
@pytest.mark.parametrize("fill", ["mixed", "random"])
def test_compressed_multifd_matches_the_replay_and_shrinks_what_shrinks(
    run, tmp, codec, fill, on_workers, monkeypatch
):
    """multifd-compression: real file contents shrink; random pages go raw, never larger.

    The destination decodes on its loop (2 cores) or on worker threads (more cores).
    """
    monkeypatch.setattr(workers, "decode_on_workers", on_workers)
    config, _ = resolve_fill({"ram_mib": 16, "fill": fill, "dirty_rate": 5000, "seed": 5})

    async def main() -> None:
        pair = await make_pair(tmp, vm=config)
        try:
            parameters = {"multifd-channels": 2, "multifd-compression": codec}
            await pair.source.execute("migrate-set-parameters", parameters)
            await pair.migrate(multifd=True)
            assert "completed" == await pair.source.wait(FINAL)
            await pair.dest.assert_matches_replay()

            info = await pair.source.execute("query-migrate")
            ram = info["ram"]
            normal_bytes = ram["normal-bytes"]
            if fill == "mixed":
                assert ram["multifd-bytes"] < 0.7 * normal_bytes
                assert ram["x-compression-ratio"] > 1.4
            else:  # the guest's own writes make a few pages compressible
                assert ram["multifd-bytes"] < 1.01 * normal_bytes
                assert 1.0 <= ram["x-compression-ratio"] < 1.05
        finally:
            await pair.close()

    run(main)


@pytest.mark.parametrize("on_workers", [False, True], ids=["decode-on-loop", "decode-on-workers"])
def test_a_compression_bomb_fails_the_migration_and_the_vm_runs_on(
    run, tmp, on_workers, monkeypatch
):
    """A frame that claims to decompress to far more than its pages is refused, clearly."""
    monkeypatch.setattr(workers, "decode_on_workers", on_workers)
    config, _ = resolve_fill({"ram_mib": 8, "fill": "mixed", "dirty_rate": 5000, "seed": 5})

    async def main() -> None:
        pair = await make_pair(tmp, vm=config)
        try:
            bomb = zlib.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in ~64 KiB

            def bombs(_fn: object, jobs: list[object]) -> list[bytes]:
                return [bomb for _ in jobs]

            parameters = {"multifd-channels": 2, "multifd-compression": "zlib"}
            await pair.source.execute("migrate-set-parameters", parameters)
            pair.source.vmm.map_jobs = bombs
            await pair.migrate(multifd=True)
            assert "failed" == await pair.source.wait(FINAL)
            assert await pair.source.runs()
            assert "failed" == await pair.dest.wait({"failed"})
            info = await pair.dest.execute("query-migrate")
            assert "zlib page data decodes to more than" in info["error-desc"]
        finally:
            await pair.close()

    run(main)


@pytest.mark.parametrize("cache_mib", [1, 64])
def test_xbzrle_sends_re_dirtied_pages_as_deltas_and_matches_the_replay(run, tmp, cache_mib):
    """A hotset guest re-dirties the same pages: they go as XBZRLE deltas from the cache."""
    config = small_vm(ram_mib=16, workload="hotset", dirty_rate=20000)

    async def main() -> None:
        pair = await make_pair(tmp, vm=config)
        try:
            parameters = {"xbzrle-cache-size": cache_mib << 20, "max-bandwidth": 64 << 20}
            await pair.source.execute("migrate-set-parameters", parameters)
            await pair.migrate(xbzrle=True)
            assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
            await pair.dest.assert_matches_replay()
            cache = (await pair.source.execute("query-migrate"))["xbzrle-cache"]
            assert cache["cache-size"] == cache_mib << 20
            assert cache["pages"] > 0
            assert cache["bytes"] < cache["pages"] * 4096
            assert cache["encoding-rate"] > 1
            received = pair.dest.record.metrics
            assert received.normal_pages == pair.source.source.metrics.normal_pages
        finally:
            await pair.close()

    run(main)


def test_xbzrle_and_multifd_together_are_refused_as_qemu_does(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await enable(pair.source, "multifd")
            with pytest.raises(Exception, match="Multifd is not compatible with xbzrle"):
                await enable(pair.source, "xbzrle")
        finally:
            await pair.close()

    run(main)
