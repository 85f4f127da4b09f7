"""TLS: migration throughput and CPU with `tls-creds` set against plaintext, in the same run.

``python -m bench tls``. One pair of daemons holds `x-any` credentials made by `livemig certs`;
an idle VM with random (incompressible) RAM migrates back and forth, taking turns: one
migration with `tls-creds` set on both daemons (TLS 1.3, both peers verified), the next with it
empty. Throughput is bytes sent / (total - setup) and the ratio is taken round by round; CPU
per GiB is each side's process CPU time over the migration, per GiB sent. The goal (issue 14):
TLS at least GOAL_RATIO of plaintext.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from bench.common import MIB, Spread, header, say, verdict, warm_memory
from bench.harness import Pair, VmSpec, rate_row, row_value
from livemig.certs import make_creds_dir
from netio import QMPClient

if TYPE_CHECKING:
    from bench.common import Run

GOAL_RATIO: Final = 0.8


def tls(run: Run) -> dict[str, object]:
    header("TLS: migration throughput and CPU per GiB, TLS 1.3 against plaintext")
    vm = VmSpec(ram_mib=run.pick(1024, 128))
    rounds = run.pick(8, 1)
    creds = run.settings.out / "tls-creds"
    make_creds_dir(creds, ["localhost", "127.0.0.1"])
    warm_memory(2 * vm.ram_bytes + 512 * MIB)
    tls_object = f"tls-creds-x509,id=tls0,dir={creds},endpoint=x-any"
    rows: list[dict[str, object]] = []
    with Pair(vm, log_dir=run.settings.out / "logs", daemon_args=("--object", tls_object)) as pair:
        for index in range(rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            rows += [_one(pair, index, secure=secure) for secure in order]
    ratio = Spread.of(
        [
            row_value(rows, "gbps", round=i, tls=True) / row_value(rows, "gbps", round=i, tls=False)
            for i in range(rounds)
        ]
    )
    met = ratio.median >= GOAL_RATIO
    side_cpu = {
        f"{side}_cpu_s_per_gib_{kind}": Spread.of(
            [float(str(r[f"{side}_cpu_s_per_gib"])) for r in rows if r["tls"] is secure]
        )
        for side in ("source", "dest")
        for kind, secure in (("tls", True), ("plain", False))
    }
    say(f"  throughput TLS / plaintext, by round: {ratio.text('.3f')}; goal >= {GOAL_RATIO}: "
        f"{verdict(met)}")  # fmt: skip
    for name, spread in side_cpu.items():
        say(f"  {name}: {spread.text('.3f')}")
    return {
        "ram_mib": vm.ram_mib,
        "ratio": ratio,
        **side_cpu,
        "runs": rows,
        "goals": {"tls_at_least_0_8_of_plaintext": {"met": met, "ratio": ratio.median}},
    }


def _one(pair: Pair, index: int, *, secure: bool) -> dict[str, object]:
    asyncio.run(_set_tls(pair, "tls0" if secure else ""))
    migration = pair.migrate(timeout_s=120.0)
    label = f"round {index + 1}, {'TLS' if secure else 'plaintext'}"
    return rate_row(migration, label, round=index, tls=secure)


async def _set_tls(pair: Pair, creds: str) -> None:
    for daemon in pair.daemons:
        async with await QMPClient.connect(daemon.qmp_address) as client:
            await client.execute("migrate-set-parameters", {"tls-creds": creds})
