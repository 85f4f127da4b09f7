"""Structured logging for the daemons: structlog, JSON lines in production, a console on a TTY.

Every line carries the context bound with `bind_context` (``migration_id``, ``role``, ...) through
contextvars, an ISO-8601 UTC timestamp and the level. The standard library's `logging` (asyncio,
qemu.qmp) is routed through the same renderer, so a daemon's stderr is one format throughout.

Usage::

    configure_logging()                        # JSON unless stderr is a TTY
    bind_context(migration_id="m-1", role="source")
    log = structlog.get_logger("vmm.outgoing")
    log.info("migration_completed", downtime_ms=41.5)
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Literal, TextIO

import structlog

if TYPE_CHECKING:
    from structlog.typing import Processor

__all__ = ["LogLevel", "bind_context", "clear_context", "configure_logging"]

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def configure_logging(
    *,
    json: bool | None = None,
    level: LogLevel | str = "info",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and the standard library's logging) for a daemon.

    Args:
        json: JSON lines (True), a readable console (False), or decide by whether ``stream`` is
            a TTY (None).
        level: The lowest level written: debug, info, warning, error or critical.
        stream: Where lines go; ``sys.stderr`` by default.

    Raises:
        ValueError: ``level`` is not a known level name.
    """
    out = sys.stderr if stream is None else stream
    try:
        level_no = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}: expected one of {', '.join(_LEVELS)}"
        ) from None
    use_json = not _is_tty(out) if json is None else json
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if use_json:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer(default=repr)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(shared, renderer, out, level_no)


def _route_stdlib_logging(
    shared: list[Processor], renderer: Processor, out: TextIO, level_no: int
) -> None:
    """Render records of the standard library's `logging` with the same processors."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.set_name("netio")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "netio"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def bind_context(**values: object) -> None:
    """Bind key-value pairs to every log line of the current context (task) from now on.

    Example: ``bind_context(migration_id="m-1", role="destination")``.
    """
    structlog.contextvars.bind_contextvars(**values)


def clear_context() -> None:
    """Forget everything bound with `bind_context` in the current context."""
    structlog.contextvars.clear_contextvars()
