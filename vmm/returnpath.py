"""The source's reader of the return path: the destination's replies, as awaitable milestones.

It runs as its own task beside the page sender (QEMU's `source_return_path_thread`). Each reply
resolves a milestone (acked, loaded, resumed, outcome); a failure (FAILED, a closed connection,
a peer timeout, a protocol error) is recorded once and wakes every waiter.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

import structlog

from netio import NetIOError
from protocol import (
    ConnectionClosed,
    DestinationFailed,
    DestinationResumed,
    ErrorCode,
    LoadCompleted,
    OutcomeReported,
    PeerTimedOut,
    PongReceived,
    ProtocolError,
    ReturnPathAcked,
)
from vmm.errors import MigrationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from netio import Channel

log = structlog.get_logger("vmm.returnpath")
_T = TypeVar("_T")


class PeerError(MigrationError):
    """The destination failed, went away or broke the protocol."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class ReturnPath:
    """Milestones and the first failure seen on one connection's return path."""

    def __init__(self, channel: Channel, *, on_failure: Callable[[PeerError], None]) -> None:
        loop = asyncio.get_running_loop()
        self._channel = channel
        self._on_failure = on_failure
        self.acked: asyncio.Future[ReturnPathAcked] = loop.create_future()
        self.loaded: asyncio.Future[LoadCompleted] = loop.create_future()
        self.resumed: asyncio.Future[DestinationResumed] = loop.create_future()
        self.outcome: asyncio.Future[OutcomeReported] = loop.create_future()
        self.failure: PeerError | None = None
        self.rtt_s: float | None = None

    async def run(self) -> None:
        """Read replies until the destination resumed, reported an outcome, or failed."""
        try:
            while self.failure is None and not self.resumed.done():
                self._dispatch(await self._channel.next_event())
        except ProtocolError as exc:
            self._fail(PeerError(f"return path: {exc}", exc.code))
        except NetIOError as exc:
            # The channel closed under us (the migration ended or was cut): a normal end.
            self._fail(PeerError(f"return path: {exc}", ErrorCode.PROTOCOL_ERROR))
        except Exception as exc:
            # Never die silently: a dead reader would leave the migration waiting for ever.
            log.exception("return_path_crashed")
            self._fail(PeerError(f"internal error on the return path: {exc!r}", ErrorCode.INTERNAL))
            raise

    def _dispatch(self, event: object) -> None:
        match event:
            case ReturnPathAcked():
                _settle(self.acked, event)
            case PongReceived(rtt_s=rtt_s):
                self.rtt_s = rtt_s
            case LoadCompleted():
                _settle(self.loaded, event)
            case DestinationResumed():
                _settle(self.resumed, event)
            case OutcomeReported():
                _settle(self.outcome, event)
            case DestinationFailed(code=code, reason=reason):
                self._fail(PeerError(f"destination failed: {reason}", code))
            case PeerTimedOut(idle_s=idle_s):
                self._fail(
                    PeerError(
                        f"destination timed out: nothing received for {idle_s:.1f} s",
                        ErrorCode.TIMEOUT,
                    )
                )
            case ConnectionClosed():
                detail = self._channel.last_error
                why = f" ({detail})" if detail is not None else ""
                self._fail(
                    PeerError(
                        f"connection to the destination closed{why}", ErrorCode.PROTOCOL_ERROR
                    )
                )
            case _:
                log.debug("return_path_event_ignored", reply=type(event).__name__)

    def _fail(self, failure: PeerError) -> None:
        if self.failure is not None:
            return
        self.failure = failure
        for future in (self.acked, self.loaded, self.resumed, self.outcome):
            if not future.done():
                future.set_exception(failure)
                future.exception()  # mark retrieved: not every milestone is awaited
        self._on_failure(failure)

    async def wait(self, future: asyncio.Future[_T]) -> _T:
        """Wait for a milestone; raise the failure if one came first."""
        return await asyncio.shield(future)


def _settle(future: asyncio.Future[_T], value: _T) -> None:
    if not future.done():
        future.set_result(value)
