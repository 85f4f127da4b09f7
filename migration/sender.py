"""The source's main stream, from the channel handshake to VMDESCRIPTION.

`StreamSender` puts every frame of the main stream on the main channel and says when a milestone
of the migration is reached (`SetupDone`, `SwitchoverDue`, `StreamSent`); the source machine
(`migration.source`) owns the status and the decisions. Within the stream, `phase` says what the
sender waits for; each phase is a small value carrying what it needs.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from migration.actions import CloseChannel, FlushNowait, Level, OpenChannel, Receive
from migration.errors import TransitionError
from migration.glue import configuration_for
from migration.multifd import MapJobs, MultifdChannels, compression, serial_map
from migration.precopy import (
    FINAL_BATCH_PAGES,
    QUEUE_AHEAD_BYTES,
    Batch,
    Precopy,
    Switchover,
    Throttled,
)
from migration.precopy_resume import PRECOPY_RESUME_CAPABILITY, SentFrames
from migration.preempt import PREEMPT, PreemptChannel
from migration.sender_phases import (
    AwaitingAck,
    Completing,
    Connecting,
    Draining,
    Idle,
    Milestone,
    Phase,
    PostcopyDue,
    PostcopyPushing,
    PostcopySwitching,
    PostcopyThrottled,
    RecoverConnecting,
    Sending,
    SendingEnd,
    SendingSetup,
    SetupDone,
    Sleeping,
    StreamSent,
    SwitchoverDue,
)
from migration.sender_recovery import MAIN, RecoverySender
from migration.source_postcopy import (
    PostcopyPush,
    push_batch_pages,
    ram_section_id,
    record_run,
    send_switch,
)
from migration.xbzrle import XbzrleEncoder
from protocol import ErrorCode, ProtocolError, SourceConnection
from vmsim import (
    SectionFull,
    SectionPart,
    SectionStart,
    state_complete,
    state_complete_postcopy,
    state_setup,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from migration.inputs import ChannelKey
    from migration.metrics import SourceMetrics
    from migration.outbox import Outbox
    from migration.params import MigrationCapabilities, MigrationParameters
    from protocol import MigrationConfiguration, PageRanges, Timeouts
    from vmsim import Machine, PageBatch

__all__ = ["MAIN", "StreamSender"]


class StreamSender(RecoverySender):
    """Frames of one migration's main stream, paced by the channel and the precopy policies."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        machine: Machine,
        metrics: SourceMetrics,
        migration_id: str,
        caps: MigrationCapabilities,
        timeouts: Timeouts | None,
        params: MigrationParameters,
        map_jobs: MapJobs = serial_map,
    ) -> None:
        self._out = outbox
        self._machine = machine
        self._zero_pages = params.zero_page_detection != "none"
        self._metrics = metrics
        self._migration_id = migration_id
        self._caps = caps
        self._timeouts = timeouts
        self._authenticated = params.unchecked_frames
        self._earlier_bytes = 0  # sent on connections closed before this one (recovery)
        self.conn = SourceConnection(
            return_path=timeouts is not None,
            timeouts=timeouts,
            now=outbox.now,
            authenticated=self._authenticated,
        )
        self.phase: Phase = Connecting()
        self.precopy: Precopy | None = None
        self.multifd = (
            MultifdChannels(
                params.multifd_channels,
                now=outbox.now,
                compression=compression(params, map_jobs),
                authenticated=self._authenticated,
            )
            if caps.multifd
            else None
        )
        self.xbzrle = (
            XbzrleEncoder(machine.ram.pages, params.xbzrle_cache_size_bytes)
            if caps.xbzrle and self.multifd is None
            else None
        )
        self._awaiting: Counter[ChannelKey] = Counter()  # flushes not yet answered by SendDone
        self.postcopy_wanted = False  # migrate-start-postcopy: switch at the next round
        self.postcopy: PostcopyPush | None = None  # after the switch
        self._config: MigrationConfiguration | None = None  # kept for a recovery
        self.preempt: PreemptChannel | None = None  # postcopy-preempt, from the switch on
        resumable = timeouts is not None and params.precopy_resume_ms > 0 and not caps.multifd
        self.sent_frames = SentFrames(machine.ram.n_pages) if resumable else None

    @property
    def resumable(self) -> bool:
        """A broken precopy may reconnect (`x-precopy-resume-ms`, a return path, no multifd)."""
        return self.sent_frames is not None

    @property
    def sent_bytes(self) -> int:
        """Bytes the kernel took on every channel of the stream."""
        preempt = self.preempt.conn.sent_bytes if self.preempt is not None else 0
        return self._earlier_bytes + self.conn.sent_bytes + self.multifd_bytes + preempt

    @property
    def multifd_bytes(self) -> int:
        """Bytes the kernel took on the multifd channels."""
        return self.multifd.sent_bytes if self.multifd is not None else 0

    def count_bytes(self) -> None:
        """Bring the byte counters of the metrics up to date."""
        self._metrics.transferred_bytes = self.sent_bytes
        self._metrics.multifd_bytes = self.multifd_bytes
        if self.xbzrle is not None:
            self._metrics.xbzrle_cache = self.xbzrle.stats.to_qmp()
        if self.multifd is not None:
            self._metrics.compression_raw_bytes = self.multifd.raw_bytes
            self._metrics.compression_sent_bytes = self.multifd.compressed_bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes queued on every channel of the stream and not yet sent."""
        multifd = self.multifd.pending_bytes if self.multifd is not None else 0
        return self.conn.pending_send_bytes + multifd

    def close_channels(self) -> None:
        """Close the main channel, the multifd channels and the preempt channel."""
        keys = [MAIN, *(self.multifd.conns if self.multifd is not None else ())]
        for key in keys + ([PREEMPT] if self.preempt is not None else []):
            self._out.do(CloseChannel(channel=key))

    def _flush(self, keys: Iterable[ChannelKey], keep_bytes: int = 0) -> None:
        """Flush `keys`; the phase goes on once every one answered (`sent`)."""
        for key in keys:
            self._awaiting[key] += 1
            self._out.flush(key, keep_bytes=keep_bytes)

    # ------------------------------------------------------------------ setup

    def abort_nowait(self, code: ErrorCode, reason: str) -> None:
        """Tell the destination the migration is over (ABORT), without waiting for the kernel."""
        try:
            self.conn.send_abort(code, reason[:200])
        except ProtocolError:
            return  # not connected yet, or the stream is over: nothing to abort on it
        self._out.do(FlushNowait(channel=MAIN))

    def opened(self, *, return_path: bool) -> None:
        """The main channel is up: CONFIGURATION, and OPEN_RETURN_PATH or the setup sections.

        With a return path, the machine reads it from now on (`Receive`).
        """
        if return_path:
            self._out.do(Receive(channel=MAIN))
        if isinstance(self.phase, RecoverConnecting):
            self._open_recovery()
            return
        resume = (PRECOPY_RESUME_CAPABILITY,) if self.resumable else ()
        config = configuration_for(
            self._machine,
            migration_id=self._migration_id,
            capabilities=self._caps.wire_names() + resume,
            multifd_channels=self.multifd.count if self.multifd is not None else 0,
        )
        self.conn.send_configuration(config)
        if return_path:
            self.conn.send_open_return_path()
            if self._caps.postcopy_ram:
                self.conn.send_postcopy_advise()
            self.phase = AwaitingAck()
            self._flush([MAIN])
        else:
            self.send_setup()

    def send_setup(self) -> None:
        """OPEN_ACK arrived (or there is no return path): the START sections."""
        if not isinstance(self.phase, Connecting | AwaitingAck):
            return
        self._machine.ram_handler.detect_zero_pages = self._zero_pages  # zero-page-detection
        for record in state_setup(self._machine.savevm):
            self._send_record(record)
        self.phase = SendingSetup()
        self._flush([MAIN])
        if self.multifd is not None:  # the destination's RAM is ready: connect them now
            for key, conn in self.multifd.conns.items():
                self._out.do(OpenChannel(channel=key, conn=conn))

    def multifd_opened(self, key: ChannelKey) -> None:
        """Multifd or preempt channel `key` connected: its handshake joins it to the migration."""
        if key == PREEMPT and self.preempt is not None:
            self.preempt.opened(self.conn.configuration or _no_configuration())
            self._urgent_on_preempt()
        elif self.multifd is not None and key in self.multifd.conns:
            self.multifd.opened(key, self.conn.configuration or _no_configuration())
            self._flush([key])

    def start_precopy(self) -> Precopy:
        """Setup is done: the precopy policies start now."""
        self.precopy = Precopy(
            machine=self._machine, metrics=self._metrics, caps=self._caps, now=self._out.now
        )
        return self.precopy

    # ------------------------------------------------------------------ precopy

    def start_round(self, params: MigrationParameters) -> SwitchoverDue | PostcopyDue | None:
        """Decide: switch over or to postcopy (the sender then idles), or send a batch."""
        precopy = self._require_precopy()
        decision = precopy.start_round(self._out.now, params)
        if isinstance(decision, Switchover):
            self._out.log(
                "switchover_decided",
                pending_bytes=decision.pending_bytes,
                threshold_bytes=precopy.policy.threshold_bytes,
                bandwidth_mbps=round(precopy.policy.mbps),
                dirty_syncs=self._metrics.dirty_sync_count,
            )
            self.phase = Idle()
            return SwitchoverDue(pending_bytes=decision.pending_bytes)
        if self.postcopy_wanted:
            self._out.log("postcopy_decided", pending_bytes=self._metrics.remaining_bytes)
            self.phase = Idle()
            return PostcopyDue()
        self._next_batch(params)
        return None

    def _next_batch(self, params: MigrationParameters) -> None:
        precopy = self._require_precopy()
        step = precopy.next_step(self._out.now, params)
        if isinstance(step, Batch):
            before = self.pending_bytes
            self.phase = Sending()
            self._send_part(step.part, end=False)
            precopy.sent(self.pending_bytes - before)
            return
        resume_at = step.until if isinstance(step, Throttled) else None
        self.phase = Draining(resume_at=resume_at)
        self._flush(self._stream_keys())

    def sent(self, channel: ChannelKey, params: MigrationParameters) -> Milestone | None:
        """A flush on `channel` finished: once all did, go on; maybe a milestone."""
        if not self._awaiting[channel]:
            return None  # a flush the sender did not ask for
        self._awaiting[channel] -= 1
        if +self._awaiting:
            return None
        phase = self.phase
        if isinstance(phase, SendingSetup):
            return SetupDone() if self.multifd is None or self.multifd.all_open else None
        if isinstance(phase, Sending):
            self._close_window()
            self._next_batch(params)
        elif isinstance(phase, Draining):
            if phase.resume_at is not None and self._out.now < phase.resume_at:
                self.phase = Sleeping(until=phase.resume_at)
            else:
                return self.start_round(params)
        elif isinstance(phase, Completing):
            self._next_record(phase)
        elif isinstance(phase, PostcopySwitching | PostcopyPushing):
            self._push(phase, params)
        elif isinstance(phase, SendingEnd):
            self.phase = Idle()
            return StreamSent()
        return None

    def timer(self, params: MigrationParameters) -> SwitchoverDue | PostcopyDue | None:
        """A deadline passed: a throttled round may start."""
        phase = self.phase
        if isinstance(phase, PostcopyThrottled) and self._out.now >= phase.until:
            self._push(PostcopyPushing(), params)
            return None
        if isinstance(phase, Sleeping) and self._out.now >= phase.until:
            return self.start_round(params)
        return None

    def next_deadline(self) -> float | None:
        """When the sender waits for time (a throttled round)."""
        phase = self.phase
        return phase.until if isinstance(phase, Sleeping | PostcopyThrottled) else None

    def _close_window(self) -> None:
        metrics = self._metrics
        if self._require_precopy().close_window(self._out.now):
            self._out.log(
                "bandwidth_window",
                level=Level.DEBUG,
                mbps=round(metrics.mbps),
                threshold_bytes=metrics.threshold_bytes,
                expected_downtime_ms=metrics.expected_downtime_ms,
                transferred_bytes=metrics.transferred_bytes,
            )

    # ------------------------------------------------------------------ switchover

    def start_completion(self) -> None:
        """The VM is stopped (device): SWITCHOVER_START, then END and FULL sections."""
        self.conn.send_switchover_start()
        records = state_complete(self._machine.savevm, FINAL_BATCH_PAGES)
        self._next_record(Completing(records=records))

    def _next_record(self, phase: Completing) -> None:
        self.phase = phase
        record = phase.held or next(phase.records, None)
        marks = self._metrics.downtime
        if record is None:
            self.conn.send_eof()
            self.conn.send_vmdesc(self._machine.savevm.describe())
            self.phase = SendingEnd()
        elif isinstance(record, SectionPart):
            self._send_part(record, end=True)
            return
        elif marks.final_ram_sent_at is None and phase.held is None:
            self.phase = Completing(records=phase.records, held=record)  # drain the RAM first
            if self.multifd is not None:
                self._flush(self.multifd.finish())
        else:
            if marks.final_ram_sent_at is None:
                marks.final_ram_sent_at = self._out.now
            self.phase = Completing(records=phase.records)
            self._send_record(record)
        self._flush([MAIN])

    # ------------------------------------------------------------------ postcopy

    def start_postcopy(self, params: MigrationParameters) -> None:
        """The VM is stopped and the arbiter agreed: queue the switch, up to POSTCOPY_RUN."""
        missing = send_switch(self.conn, self._machine, ram_section_id(self._machine))
        cap = params.max_postcopy_bandwidth_bytes_per_s  # the push is held to it
        batch_pages = push_batch_pages(self._precopy_rate(), cap)
        self._out.log("postcopy_switch", missing_pages=missing, batch_pages=batch_pages)
        deltas = self.xbzrle if self._caps.postcopy_xbzrle else None
        self.postcopy = PostcopyPush(
            self._machine,
            now=self._out.now,
            batch_pages=batch_pages,
            encode=deltas.encode_frozen if deltas is not None else None,
        )
        self.open_preempt()
        self.phase = PostcopySwitching(missing_pages=missing)
        self._flush([MAIN])

    def _precopy_rate(self) -> float:
        """Bytes per second precopy moved since setup (0: not measured)."""
        since = self._metrics.setup_done_at
        elapsed_s = self._out.now - since if since is not None else 0.0
        return self._metrics.transferred_bytes / elapsed_s if elapsed_s > 0 else 0.0

    def postcopy_request(self, ranges: PageRanges) -> None:
        """REQ_PAGES: queue the pages asked for now, ahead of the next background batch."""
        push = self.postcopy
        if push is None:
            return
        push.request(ranges)
        self._metrics.postcopy_requests = push.requests
        if self._urgent_on_preempt():
            return
        if isinstance(self.phase, PostcopyPushing | PostcopyThrottled) and (
            batch := push.urgent_batch()
        ):
            self._send_postcopy_pages(batch, push)

    def _push(
        self, phase: PostcopySwitching | PostcopyPushing, params: MigrationParameters
    ) -> None:
        push = self.postcopy
        if push is None:
            return
        if isinstance(phase, PostcopySwitching):
            record_run(self._metrics, now=self._out.now, missing_pages=phase.missing_pages)
        self.phase = PostcopyPushing()
        batch = None if self._urgent_on_preempt() else push.urgent_batch()
        if batch is None:
            rate = params.max_postcopy_bandwidth_bytes_per_s
            if (due_at := push.background_due_at(self._out.now, rate)) is not None:
                self.phase = PostcopyThrottled(until=due_at)
                return
            batch = push.background_batch()
        if batch is not None:
            self._send_postcopy_pages(batch, push)
            return
        if self.preempt is not None:
            self.preempt.end()
        for end in state_complete_postcopy(self._machine.savevm, push.batch_pages):
            self.conn.send_ram(end.section_id, end.batch, end=True)
        self.conn.send_eof()
        self.conn.send_vmdesc(self._machine.savevm.describe())
        self.phase = SendingEnd()
        self._flush([MAIN])

    def _urgent_on_preempt(self) -> bool:
        """Send every requested page on the preempt channel, if it is up (whether it is)."""
        preempt, push = self.preempt, self.postcopy
        if preempt is None or not preempt.ready or push is None:
            return False
        while (batch := push.urgent_batch(whole=True)) is not None:
            self._metrics.normal_pages += batch.normal_pages
            self._metrics.zero_pages += batch.zero_pages
            preempt.send(batch)
        return True

    def _send_postcopy_pages(self, batch: PageBatch, push: PostcopyPush) -> None:
        """Pages after the switch (whole, or as deltas: a frame of them kept ahead, not 4 MiB)."""
        self._metrics.normal_pages += batch.normal_pages
        self._metrics.zero_pages += batch.zero_pages
        self.conn.send_ram(ram_section_id(self._machine), batch, end=False)
        self._flush([MAIN], keep_bytes=min(push.frame_bytes, batch.data_bytes))

    # ------------------------------------------------------------------ frames

    def _send_record(self, record: SectionStart | SectionFull) -> None:
        if isinstance(record, SectionStart):
            self.conn.send_section_start(
                record.section_id, record.idstr, record.instance_id, record.version_id, record.setup
            )
        else:
            self.conn.send_section_full(
                record.section_id, record.idstr, record.instance_id, record.version_id, record.state
            )

    def _send_part(self, part: SectionPart, *, end: bool) -> None:
        """Queue a RAM part (on the main channel, or spread over the multifd channels).

        With XBZRLE, the pages it re-encodes as deltas count in its own statistics, not here,
        and a frame of deltas is kept ahead alone (16 MiB of them would hold the whole RAM's).
        """
        batch = part.batch if self.xbzrle is None else self.xbzrle.encode(part.batch)
        self._metrics.normal_pages += batch.normal_pages
        self._metrics.zero_pages += batch.zero_pages
        multifd = self.multifd
        if multifd is None:
            self.conn.send_ram(part.section_id, batch, end=end)
            if self.sent_frames is not None:
                self.sent_frames.sent(part.batch)
            ahead = QUEUE_AHEAD_BYTES if batch.delta_lens is None else batch.data_bytes
            self._flush([MAIN], keep_bytes=ahead)
            return
        synced = multifd.sync(self._machine.ram_handler.stats().dirty_sync_count)
        used = multifd.send(part.batch)
        keys = dict.fromkeys([*synced, *used])
        self._flush(keys, keep_bytes=QUEUE_AHEAD_BYTES // multifd.count)
        if not keys:  # an empty last part: nothing to wait for
            self._flush([MAIN])

    def _stream_keys(self) -> list[ChannelKey]:
        """The channels pages travel on."""
        return list(self.multifd.conns) if self.multifd is not None else [MAIN]

    def _require_precopy(self) -> Precopy:
        if self.precopy is None:
            msg = "precopy used before setup was done"
            raise TransitionError(msg)
        return self.precopy


def _no_configuration() -> MigrationConfiguration:
    msg = "a multifd channel opened before the configuration was sent"
    raise TransitionError(msg)
