"""The page data path between two processes: every byte arrives, in place (numbers: the helper).

`tests.helpers.fake_conn.measure_throughput` moves frames of 1 MiB batches through
`netio.Channel` between two processes over loopback; run ``python -m tests.helpers.fake_conn``
from the repository root for a comparison with a blocking ``sendall``/``recv_into`` baseline.
These tests assert no timing. They check what arrived: the frames and bytes each side's channel
counted, and that the receiver's RAM holds exactly the sender's (seeded random) page data, each
batch where the sender took it from.
"""

from __future__ import annotations

import pytest

from tests.helpers.fake_conn import FOOTER, HEADER, measure_throughput

BATCH = 1 << 20
FRAMES = 64  # 64 MiB: each batch lands at its own offset of the receiver's 64 MiB RAM


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_channel_moves_batches_between_processes(loop_name):
    result = measure_throughput("channel", loop_name, batch_bytes=BATCH, total_bytes=FRAMES * BATCH)

    assert FRAMES == result.frames_sent
    assert (result.frames_sent, 0) == (result.frames_received, result.truncated_bytes)
    assert FRAMES * (HEADER.size + BATCH + FOOTER.size) == result.bytes_sent
    assert result.bytes_sent == result.bytes_received
    assert FRAMES * BATCH == result.total_bytes
    assert result.sent_digest == result.received_digest
    assert result.elapsed_s > 0


def test_raw_baseline_moves_the_same_bytes():
    frames = 16
    result = measure_throughput("raw", batch_bytes=BATCH, total_bytes=frames * BATCH)

    assert (frames, frames * BATCH) == (result.frames_sent, result.bytes_sent)
    assert result.bytes_sent == result.bytes_received
    assert (result.frames_sent, 0) == (result.frames_received, result.truncated_bytes)
    assert result.sent_digest == result.received_digest
