"""The recover channel's part of the stream sender: postcopy recovery and precopy resume.

`reconnect` opens a new main connection as a `recover` channel of the same migration; the
destination answers a postcopy with its received bitmap (RECV_BITMAP, docs/protocol.md 1.10)
and a precopy with how many RAM frames it loaded (RESUME_POINT, 1.11); the sender then sends
again what may be missing and goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration.errors import TransitionError
from migration.inputs import ChannelKey
from migration.preempt import PreemptChannel
from migration.sender_phases import (
    PostcopyPushing,
    RecoverAwaitingBitmap,
    RecoverConnecting,
    ResumeAwaitingPoint,
)
from migration.source_postcopy import BitmapIntake, ram_section_id
from protocol import ChannelRole, SourceConnection

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Iterable

    from migration.outbox import Outbox
    from migration.params import MigrationCapabilities, MigrationParameters
    from migration.precopy_resume import SentFrames
    from migration.sender_phases import Phase, PostcopyDue, PostcopySwitching, SwitchoverDue
    from migration.source_postcopy import PostcopyPush
    from migration.xbzrle import XbzrleEncoder
    from protocol import MigrationConfiguration, ReceivedBitmap, Timeouts
    from vmsim import Machine

MAIN = ChannelKey(ChannelRole.MAIN)


class RecoverySender:
    """`StreamSender` provides the attributes and the methods declared here."""

    phase: Phase
    conn: SourceConnection
    postcopy: PostcopyPush | None
    preempt: PreemptChannel | None
    sent_frames: SentFrames | None
    xbzrle: XbzrleEncoder | None
    _out: Outbox
    _machine: Machine
    _caps: MigrationCapabilities
    _timeouts: Timeouts | None
    _authenticated: bool
    _config: MigrationConfiguration | None
    _earlier_bytes: int
    _awaiting: Counter[ChannelKey]

    def open_preempt(self) -> None:
        """postcopy-preempt: connect a preempt channel for the requested pages."""
        if self._caps.postcopy_preempt:
            self.preempt = PreemptChannel(self._out, authenticated=self._authenticated)
            self.preempt.open()

    def _flush(self, keys: Iterable[ChannelKey], keep_bytes: int = 0) -> None:
        raise NotImplementedError

    def start_round(self, params: MigrationParameters) -> SwitchoverDue | PostcopyDue | None:
        """Decide: switch over or to postcopy, or send a batch (`StreamSender.start_round`)."""
        raise NotImplementedError

    def _push(
        self, phase: PostcopySwitching | PostcopyPushing, params: MigrationParameters
    ) -> None:
        raise NotImplementedError

    def reconnect(self) -> SourceConnection:
        """Postcopy recovery or precopy resume: a new main connection, opened as `recover`."""
        self._earlier_bytes += self.conn.sent_bytes
        if self.preempt is not None:  # closed with the main channel; a new one after recovery
            self._earlier_bytes += self.preempt.conn.sent_bytes
            self.preempt = None
        self._config = self.conn.configuration or self._config
        self.conn = SourceConnection(
            return_path=True,
            timeouts=self._timeouts,
            now=self._out.now,
            authenticated=self._authenticated,
        )
        self._awaiting.clear()
        if self.postcopy is not None:
            self.postcopy.forget_requests()
        self.phase = RecoverConnecting()
        return self.conn

    def _open_recovery(self) -> None:
        config = self._config
        if config is None:
            msg = "a recovery before the first connection was configured"
            raise TransitionError(msg)
        advised = self._caps.postcopy_ram and self.postcopy is None
        self.conn.open_recovery(config, ram_section_id(self._machine), advised=advised)
        if self.postcopy is None:
            self.phase = ResumeAwaitingPoint()
        else:
            self.phase = RecoverAwaitingBitmap(intake=BitmapIntake(config.ram_pages))
        self._flush([MAIN])

    def resume_point(
        self, loaded_frames: int, params: MigrationParameters
    ) -> SwitchoverDue | PostcopyDue | None:
        """RESUME_POINT: send again what may not have arrived, PRECOPY_RESUME, and go on."""
        if not isinstance(self.phase, ResumeAwaitingPoint) or self.sent_frames is None:
            msg = "RESUME_POINT when no precopy resume was asked for"
            raise TransitionError(msg)
        pages = self.sent_frames.resend(loaded_frames, self._machine.ram_handler, self.xbzrle)
        self._out.log("precopy_resuming", loaded_frames=loaded_frames, resent_pages=pages)
        self.conn.send_precopy_resume()
        return self.start_round(params)

    def recv_bitmap(self, event: ReceivedBitmap, params: MigrationParameters) -> bool:
        """RECV_BITMAP; once whole, POSTCOPY_RESUME and the push goes on (True then)."""
        phase = self.phase
        if not isinstance(phase, RecoverAwaitingBitmap) or not phase.intake.add(event):
            return False
        missing = self._machine.ram_handler.postcopy_recover(phase.intake.received)
        self._out.log("postcopy_resuming", missing_pages=missing)
        self.conn.send_postcopy_resume()
        self.open_preempt()
        self.phase = PostcopyPushing()
        self._push(self.phase, params)
        return True
