"""postcopy-preempt: the pages the destination asks for travel on their own channel.

With the capability the source opens a `preempt` channel at the switch and sends every
requested page on it while the background push stays on the main channel; the destination
ends the load only after the preempt channel's EOF. Every migration equals the replay; a cut of
either channel pauses the postcopy and `x-auto-recover` takes it up with a new preempt channel.
"""

from __future__ import annotations

import pytest

from tests.helpers.inproc import FINAL, make_pair, small_vm
from tests.integration import paths
from vmsim import WorkloadKind

SLOW_PUSH = {"downtime-limit": 1, "max-postcopy-bandwidth": 16 << 20}  # 32 MiB: 2 s of push


async def _preempted_postcopy(tmp, **fault: object) -> tuple[int, int]:
    """Migrate a busy 32 MiB guest with postcopy-preempt (through `fault`, if any); return the
    pages sent on the preempt channel(s) and received there, once it completed replay-equal."""
    vm = small_vm(ram_mib=32, workload=WorkloadKind.HOTSET, dirty_rate=20_000, hot_mib=2)
    pair = await make_pair(tmp, vm=vm, proxy=bool(fault))
    try:
        if fault:
            pair.fault(**fault)
        await pair.source.execute("migrate-set-parameters", SLOW_PUSH)
        await pair.migrate(postcopy_ram=True, postcopy_preempt=True)
        await pair.source.execute("migrate-start-postcopy")
        assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
        assert "completed" == await pair.dest.wait({"completed"}, timeout_s=10)
        expected = paths.SRC_POSTCOPY_RECOVERED if fault else paths.SRC_POSTCOPY_COMPLETED
        assert expected == paths.collapsed(pair.source.source_path())
        assert not await pair.source.runs()
        await pair.dest.assert_matches_replay()
        sender = pair.source.source.sender
        sent = sender.preempt.pages if sender.preempt is not None else 0
        info = await pair.dest.execute("query-migrate")
        return sent, int(info.get("x-preempt-pages", 0))
    finally:
        await pair.close()


def test_requested_pages_go_on_the_preempt_channel(run, tmp):
    sent, received = run(lambda: _preempted_postcopy(tmp))
    assert sent > 0
    assert received == sent  # every one arrived there, none was lost or doubled


@pytest.mark.parametrize(
    "fault",
    [
        {"type": "cut", "before_frame": "REQ_PAGES"},  # the main channel, at a page request
        {"type": "cut", "direction": "main", "before_frame": "PAGES"},  # the preempt channel
    ],
    ids=["main", "preempt"],
)
def test_a_cut_of_either_channel_recovers_with_a_new_preempt_channel(run, tmp, fault):
    sent, received = run(lambda: _preempted_postcopy(tmp, **fault), timeout_s=40)
    assert sent > 0  # on the preempt channel of the recovered postcopy
    assert received > 0
