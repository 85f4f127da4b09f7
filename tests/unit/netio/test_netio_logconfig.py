"""Logging configuration (netio/logconfig.py): JSON lines, console, context binding."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from typing import TYPE_CHECKING

import pytest
import structlog

from netio import bind_context, clear_context, configure_logging

if TYPE_CHECKING:
    from collections.abc import Iterator


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    clear_context()
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if h.get_name() == "netio"]:
        root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_context_level_and_iso_timestamp():
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    bind_context(migration_id="m-1", role="source")
    structlog.get_logger("vmm.outgoing").info("migration_started", ram_bytes=4096)

    [line] = lines(stream)
    assert {
        "event": "migration_started",
        "ram_bytes": 4096,
        "migration_id": "m-1",
        "role": "source",
        "level": "info",
    } == {k: v for k, v in line.items() if k != "timestamp"}
    stamp = dt.datetime.fromisoformat(str(line["timestamp"]))
    assert dt.timedelta(0) == stamp.utcoffset()
    assert abs(dt.datetime.now(dt.UTC) - stamp) < dt.timedelta(minutes=1)


def test_json_is_the_default_when_not_a_tty():
    stream = io.StringIO()
    configure_logging(stream=stream)
    structlog.get_logger().warning("peer_slow", rtt_ms=12.5)

    assert [("peer_slow", "warning", 12.5)] == [
        (line["event"], line["level"], line["rtt_ms"]) for line in lines(stream)
    ]


def test_console_renderer_on_a_tty():
    stream = FakeTTY()
    configure_logging(stream=stream)
    bind_context(role="destination")
    structlog.get_logger().info("vm_resumed", downtime_ms=41)

    text = stream.getvalue()
    assert "vm_resumed" in text
    assert "downtime_ms=41" in text
    assert "role=destination" in text
    assert not text.lstrip().startswith("{")


def test_level_filters_lower_levels():
    stream = io.StringIO()
    configure_logging(json=True, level="warning", stream=stream)
    log = structlog.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")

    assert ["w", "e"] == [line["event"] for line in lines(stream)]


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging(level="loud")


def test_clear_context_forgets_bound_values():
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    bind_context(migration_id="m-2")
    clear_context()
    structlog.get_logger().info("after_clear")

    assert "migration_id" not in lines(stream)[0]


def test_exceptions_are_structured_in_json():
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)

    def fail() -> None:
        raise RuntimeError("disk on fire")

    try:
        fail()
    except RuntimeError:
        structlog.get_logger().exception("save_failed")

    [line] = lines(stream)
    assert "save_failed" == line["event"]
    assert "error" == line["level"]
    assert "RuntimeError" == line["exception"][0]["exc_type"]
    assert "disk on fire" == line["exception"][0]["exc_value"]


def test_stdlib_logging_goes_through_the_same_renderer():
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    configure_logging(json=True, stream=stream)  # reconfiguring does not duplicate lines
    bind_context(role="source")
    logging.getLogger("asyncio").warning("socket.send() raised %s", "EPIPE")

    [line] = lines(stream)
    assert {
        "event": "socket.send() raised EPIPE",
        "logger": "asyncio",
        "level": "warning",
        "role": "source",
    } == {k: v for k, v in line.items() if k != "timestamp"}


def test_capture_logs_sees_event_dicts():
    configure_logging(json=True, stream=io.StringIO())
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        bind_context(migration_id="m-3")
        structlog.get_logger().info("iteration_completed", iteration=2, dirty_pages=10)

    assert [
        {
            "event": "iteration_completed",
            "iteration": 2,
            "dirty_pages": 10,
            "migration_id": "m-3",
            "log_level": "info",
        }
    ] == captured
