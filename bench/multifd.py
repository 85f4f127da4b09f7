"""Multifd: migration throughput and CPU with pages on N channels against one stream, same run.

``python -m bench multifd``. One pair of daemons; an idle VM with random (incompressible) RAM
migrates back and forth, taking turns: one stream (capability `multifd` off), then `multifd`
with 2 channels (and 4 in a full run). Throughput is bytes sent / (total - setup); the ratio to
the single stream is taken round by round. CPU per GiB is each side's process CPU time over the
migration, per GiB sent. The goal (issue 13): on loopback, 2 channels are no slower than one
stream (ratio >= GOAL_RATIO, the noise of these machines allowed for).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from bench.common import MIB, Spread, header, say, verdict, warm_memory
from bench.harness import Pair, VmSpec, rate_row, row_value
from netio import QMPClient

if TYPE_CHECKING:
    from bench.common import Run

GOAL_RATIO: Final = 0.95
"""'No slower', less the round-to-round noise of loopback here (±3-5 %)."""


def multifd(run: Run) -> dict[str, object]:
    header("multifd: migration throughput and CPU per GiB, N channels against one stream")
    vm = VmSpec(ram_mib=run.pick(1024, 128))
    rounds = run.pick(6, 1)
    channel_counts = run.pick((2, 4), (2,))
    warm_memory(2 * vm.ram_bytes + 512 * MIB)
    rows: list[dict[str, object]] = []
    with Pair(vm, log_dir=run.settings.out / "logs") as pair:
        for index in range(rounds):
            variants = (0, *channel_counts)
            order = variants if index % 2 == 0 else tuple(reversed(variants))
            rows += [_one(pair, index, channels) for channels in order]
    ratios = {
        channels: Spread.of(
            [
                row_value(rows, "gbps", round=i, channels=channels)
                / row_value(rows, "gbps", round=i, channels=0)
                for i in range(rounds)
            ]
        )
        for channels in channel_counts
    }
    met = ratios[2].median >= GOAL_RATIO
    cpu = {
        f"{side}_cpu_s_per_gib_{_name(channels)}": Spread.of(
            [float(str(r[f"{side}_cpu_s_per_gib"])) for r in rows if r["channels"] == channels]
        )
        for side in ("source", "dest")
        for channels in (0, *channel_counts)
    }
    for channels, spread in ratios.items():
        say(f"  throughput {channels} channels / one stream, by round: {spread.text('.3f')}")
    say(f"  goal: 2 channels >= {GOAL_RATIO} of one stream: {verdict(met)}")
    for name, spread in cpu.items():
        say(f"  {name}: {spread.text('.3f')}")
    return {
        "ram_mib": vm.ram_mib,
        "ratios": {str(c): s for c, s in ratios.items()},
        **cpu,
        "runs": rows,
        "goals": {"multifd_2_no_slower_than_one_stream": {"met": met, "ratio": ratios[2].median}},
    }


def _name(channels: int) -> str:
    return f"multifd{channels}" if channels else "single"


def _one(pair: Pair, index: int, channels: int) -> dict[str, object]:
    asyncio.run(_set_multifd(pair, channels))
    migration = pair.migrate(timeout_s=120.0)
    label = f"round {index + 1}, {_name(channels)}"
    return rate_row(migration, label, round=index, channels=channels)


async def _set_multifd(pair: Pair, channels: int) -> None:
    """Capability multifd on (with `channels`) or off on the daemon about to send."""
    async with await QMPClient.connect(pair.source.qmp_address) as client:
        state = {"capability": "multifd", "state": channels > 0}
        await client.execute("migrate-set-capabilities", {"capabilities": [state]})
        if channels:
            await client.execute("migrate-set-parameters", {"multifd-channels": channels})
