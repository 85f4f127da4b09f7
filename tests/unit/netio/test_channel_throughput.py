"""Smoke test of the page data path between two processes (numbers: see the helper).

`tests.helpers.fake_conn.measure_throughput` moves frames of 1 MiB batches through
`netio.Channel` between two processes over loopback; run ``python -m tests.helpers.fake_conn``
from the repository root for a comparison with a blocking ``sendall``/``recv_into`` baseline.
This test only checks that every frame arrives intact on both loops; it asserts no timing.
"""

from __future__ import annotations

import pytest

from tests.helpers.fake_conn import measure_throughput


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_channel_moves_batches_between_processes(loop_name):
    result = measure_throughput("channel", loop_name, total_bytes=64 << 20)

    assert 64 << 20 == result.total_bytes
    assert result.elapsed_s > 0


def test_raw_baseline_runs():
    result = measure_throughput("raw", total_bytes=16 << 20)

    assert result.elapsed_s > 0
