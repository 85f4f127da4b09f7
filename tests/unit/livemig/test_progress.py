"""Progress line and summary rendering from query-migrate replies."""

from __future__ import annotations

from livemig.progress import progress_line, summary_lines


def test_progress_line_shows_remaining_rate_pass_and_expected_downtime() -> None:
    info = {
        "status": "active",
        "expected-downtime": 42,
        "ram": {
            "total": 100 * 1024 * 1024,
            "remaining": 25 * 1024 * 1024,
            "mbps": 16000.0,
            "dirty-sync-count": 2,
            "dirty-pages-rate": 1000,
        },
    }

    line = progress_line(info)

    assert "75.0%" in line
    assert "remaining     25.0 MiB" in line
    assert "2.00 GB/s" in line
    assert "pass 2" in line
    assert "expected downtime 42 ms" in line


def test_summary_of_a_completed_migration() -> None:
    info = {
        "status": "completed",
        "total-time": 1000,
        "setup-time": 100,
        "downtime": 12,
        "ram": {"transferred": 2 << 30, "total": 1 << 30, "normal": 5, "duplicate": 6},
        "x-downtime-breakdown": {"final-ram": 10, "handover": 2},
    }

    text = "\n".join(summary_lines(info))

    assert "downtime:      12 ms" in text
    assert "2048.0 MiB of 1024 MiB RAM" in text
    assert "final-ram 10 ms, handover 2 ms" in text


def test_summary_of_a_failure_names_the_error() -> None:
    assert ["status:        failed", "error:         refused"] == summary_lines(
        {"status": "failed", "error-desc": "refused"}
    )


def test_progress_line_shows_the_throttle_while_one_slows_the_guest() -> None:
    info = {"status": "active", "ram": {"total": 1, "remaining": 1}, "cpu-throttle-percentage": 40}
    assert "throttle 40%" in progress_line(info)
    info["cpu-throttle-percentage"] = 0
    assert "throttle" not in progress_line(info)
    info["dirty-limit-ring-full-time"] = 16_000_000
    assert "dirty limit" in progress_line(info)


def test_summary_names_the_policy_that_ended_it_and_the_throttle_cost() -> None:
    failed = {
        "status": "failed",
        "error-desc": "migration ended by policy x-progress-timeout (...)",
        "x-timeout-actions": [{"policy": "x-progress-timeout", "action": "cancel", "at-ms": 150}],
    }
    text = "\n".join(summary_lines(failed))
    assert "x-progress-timeout expired at 150 ms: cancel" in text
    completed = {
        "status": "completed",
        "ram": {},
        "x-throttle-started-at-pass": 5,
        "x-guest-ticks-throttled": 1234,
    }
    assert "from pass 5, guest work lost 1234 ticks" in "\n".join(summary_lines(completed))


def test_a_broken_precopy_shows_while_it_reconnects_and_in_the_summary() -> None:
    info = {"status": "active", "ram": {"total": 1, "remaining": 1}, "x-precopy-breaks": 1}
    info["x-reconnecting"] = True
    assert "link broken: reconnecting (break 1)" in progress_line(info)
    info["x-reconnecting"] = False
    assert "reconnecting" not in progress_line(info)
    completed = {"status": "completed", "ram": {}, "x-precopy-breaks": 2}
    assert "link breaks:   2, each resumed" in "\n".join(summary_lines(completed))


def test_progress_line_shows_compression_and_the_xbzrle_cache_at_work() -> None:
    info: dict[str, object] = {"status": "active", "ram": {"total": 1, "remaining": 1}}
    assert "compressed" not in progress_line(info)
    info["ram"] = {"total": 1, "remaining": 1, "x-compression-ratio": 2.414}
    assert "compressed 2.41x" in progress_line(info)
    info["xbzrle-cache"] = {"pages": 10, "cache-miss-rate": 0.17, "encoding-rate": 4.21}
    assert "xbzrle hits 83% (4.2x)" in progress_line(info)
    info["xbzrle-cache"] = {"pages": 0, "cache-miss-rate": 1.0, "encoding-rate": 0.0}
    assert "xbzrle" not in progress_line(info)
