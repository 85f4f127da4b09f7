"""Run a sans-IO migration machine on the event loop: execute its actions, feed it inputs.

`MachineRunner` is the whole contract between the migration engine (`migration`) and asyncio,
as aioquic's `QuicConnectionProtocol.transmit()` is for QUIC: every input goes through
`feed()`, which calls the machine's ``handle(input, now)`` and executes the actions it returns,
then re-arms one timer from ``next_deadline()``. Executing an action never awaits: what needs
I/O (connecting, flushing, reading, building a machine in a thread) runs in a task that feeds
its result back as an input. Inputs that arrive while actions execute are queued and handled in
order, so ``handle`` is never re-entered. Each channel has one reader task (protocol events,
then the end of the stream) and one writer task (`Flush` requests, each answered by `SendDone`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol, cast

import structlog

from migration import actions as act
from migration import inputs as inp
from netio import NetIOError, connect_channel
from protocol import ConnectionClosed, PagesToDecode, PeerTimedOut, ProtocolError
from vmm.reports import LOG_LEVELS, side_of
from vmm.workers import decoded

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping

    import numpy as np
    from numpy.typing import NDArray

    from netio import ChannelLike, ChannelOptions, MigrationAddress, TlsClient
    from protocol import Event as ProtocolEvent
    from protocol import SourceConnection
    from vmm.vcpu_thread import VcpuLock
    from vmsim import Machine, MachineConfig, RunState

log = structlog.get_logger("vmm.migration")
_LINGER_S: Final = 1.0  # a channel closed while a last reply is still queued gets this long


class VmStopError(Exception):
    """Stopping the VM for the switchover failed; it is stopped all the same (QEMU).

    Attributes:
        previous: the run state before the stop (the one to return to).
        reason: why, for the migration's error-desc.
    """

    def __init__(self, previous: RunState, reason: str) -> None:
        super().__init__(reason)
        self.previous = previous
        self.reason = reason


class SansIOMachine(Protocol):
    """What a runner drives: `SourceMigration`, `DestMigration`, `ResolveResponder`."""

    @property
    def finished(self) -> bool:
        """Whether the machine has nothing left to do."""
        ...

    def handle(self, event: inp.Input, now: float) -> list[act.Action]:
        """Take one input; return the actions to execute."""
        ...

    def next_deadline(self) -> float | None:
        """When `TimerFired` is due, if ever."""
        ...


class RunnerHost(Protocol):
    """What the daemon does for a migration: the VM, events, the ownership decision."""

    vcpu_lock: VcpuLock
    """Held while a machine handles an input: the VM's vCPU thread is then between slices."""

    def stop_vm_for_migration(self) -> RunState:
        """Stop the VM to finish-migrate; return its previous run state (or raise VmStopError)."""
        ...

    def restore_vm(self, runstate: RunState) -> None:
        """Put the VM back in `runstate` (run it if it was running)."""
        ...

    def set_vm_runstate(self, runstate: RunState) -> None:
        """Leave the stopped VM in `runstate`."""
        ...

    def throttle_vm(self, *, cpu_percent: int, dirty_limit_mb_per_s: int | None) -> None:
        """Slow the guest down for the migration (0 and None: lift it)."""
        ...

    async def build_machine(self, config: MachineConfig) -> Machine:
        """An empty machine for an incoming VM, RAM pre-faulted (in a thread)."""
        ...

    def run_migrated_vm(
        self, machine: Machine, on_page_fault: Callable[[NDArray[np.intp]], None] | None = None
    ) -> str:
        """Install a migrated machine as this daemon's VM; return its run state.

        In postcopy, `on_page_fault` is told the pages the guest blocks on.
        """
        ...

    def wake_vm(self) -> None:
        """Postcopy: pages arrived for the VM."""
        ...

    def watch_vm_faults(self, on_page_fault: Callable[[NDArray[np.intp]], None]) -> None:
        """Postcopy recovery: the VM's page faults go to `on_page_fault` from now on."""
        ...

    def decide_handover(self, migration_id: str) -> tuple[bool, str]:
        """The ownership arbiter: may the VM pass to the destination (and why not)."""
        ...

    def emit_event(self, name: str, data: Mapping[str, object] | None = None) -> None:
        """A QMP event."""
        ...

    def migration_status_changed(self, side: str | None, status: str, migration_id: str) -> None:
        """Migration `migration_id` of `side` (source or destination) reached `status`."""
        ...


class MachineRunner:
    """Executes one machine's actions on the running loop and feeds it what happens.

    Args:
        machine: the sans-IO machine.
        host: the daemon's side of the actions.
        address: where `OpenChannel` connects (None: the machine opens no channels).
        options: socket options for channels it opens (read when one is opened).
        clock: the loop's clock.
        context: fields every log line of this machine carries (role, migration id).
        tls: how channels it opens are secured (`tls-creds`), or None for plaintext.
        send_guard: held while a channel sends, when the queued page data views guest RAM
            the vCPU thread writes (`vmm.vcpu_thread`); None when pages go from copies.
    """

    def __init__(
        self,
        machine: SansIOMachine,
        *,
        host: RunnerHost,
        address: MigrationAddress | None,
        options: Callable[[], ChannelOptions],
        clock: Callable[[], float],
        context: Callable[[], Mapping[str, object]],
        tls: TlsClient | None = None,
        send_guard: VcpuLock | None = None,
    ) -> None:
        self.machine = machine
        self._tls = tls
        self._send_guard = send_guard
        self._host = host
        self._address = address
        self._options = options
        self._clock = clock
        self._context = context
        self._loop = asyncio.get_running_loop()
        self.channels: dict[inp.ChannelKey, ChannelLike] = {}
        self._writers: dict[inp.ChannelKey, _Writer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lingering: set[asyncio.Task[None]] = set()
        self._pending: deque[inp.Input] = deque()
        self._feeding = False
        self._timer: asyncio.TimerHandle | None = None
        self.done = asyncio.Event()

    # ------------------------------------------------------------------ inputs

    def start(self, actions: list[act.Action]) -> None:
        """Execute the machine's first actions (from its ``start()``)."""
        self._feeding = True
        try:
            with structlog.contextvars.bound_contextvars(**self._context()), self._host.vcpu_lock:
                self._run_actions(actions)
                self._drain()
        finally:
            self._feeding = False
        self._after()

    def retarget(self, address: MigrationAddress) -> None:
        """Connect channels to `address` from now on (`migrate resume=true` names a URI)."""
        self._address = address

    def adopt_channel(self, key: inp.ChannelKey, channel: ChannelLike) -> None:
        """A channel the router accepted (reading starts on `Receive`); closed if finished."""
        if self.done.is_set():
            channel.close()  # nothing would close it later
            return
        channel.send_guard = self._send_guard
        self.channels[key] = channel

    def feed(self, event: inp.Input) -> None:
        """Handle an input now (or right after the one being handled)."""
        self._pending.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            with structlog.contextvars.bound_contextvars(**self._context()), self._host.vcpu_lock:
                self._drain()
        finally:
            self._feeding = False
        self._after()

    def _drain(self) -> None:
        while self._pending:
            if self.done.is_set():
                self._pending.clear()
                return
            event = self._pending.popleft()
            self._run_actions(self.machine.handle(event, self._clock()))

    async def close(self) -> None:
        """Daemon shutdown: tell the machine (it decides nothing), then drop every task."""
        if not self.done.is_set():
            self.feed(inp.ShutdownRequested())
        await self._stop_tasks()
        self._close_all()

    # ------------------------------------------------------------------ actions

    def _run_actions(self, actions: list[act.Action]) -> None:
        for action in actions:
            self._execute(action)

    def _execute(self, action: act.Action) -> None:  # noqa: C901, PLR0912 - one branch per action
        match action:
            case act.OpenChannel(channel=key, conn=conn):
                self._spawn(self._open(key, conn))
            case act.Receive(channel=key):
                if (channel := self.channels.get(key)) is not None:
                    self._spawn(self._read(key, channel))
            case act.Flush(channel=key, keep_bytes=keep_bytes):
                if (writer := self._writer(key)) is not None:
                    writer.request(keep_bytes)
            case act.FlushNowait(channel=key):
                if (channel := self.channels.get(key)) is not None:
                    with contextlib.suppress(NetIOError, OSError):
                        channel.flush_nowait()
            case act.CloseChannel(channel=key, linger_s=linger_s):
                self._close_channel(key, linger_s)
            case act.PrepareMachine(config=config):
                self._spawn(self._build(config))
            case act.DecideHandover(migration_id=migration_id):
                commit, reason = self._host.decide_handover(migration_id)
                self._pending.append(inp.HandoverDecided(commit=commit, reason=reason))
            case act.EmitEvent(name=name, data=data):
                self._host.emit_event(name, data)
            case act.StatusChanged(status=status, migration_id=migration_id):
                self._host.migration_status_changed(side_of(self._context()), status, migration_id)
            case act.LogFact():
                self._log(action)
            case act.Finished():
                self._finished()
            case _:
                self._execute_vm(action)

    def _execute_vm(self, action: act.Action) -> None:
        """The actions on the daemon's VM."""
        match action:
            case act.StopVm():
                self._stop_vm()
            case act.ResumeVm(runstate=runstate):
                self._host.restore_vm(runstate)
            case act.SetVmRunState(runstate=runstate):
                self._host.set_vm_runstate(runstate)
            case act.ThrottleVm(cpu_percent=percent, dirty_limit_mb_per_s=limit):
                self._host.throttle_vm(cpu_percent=percent, dirty_limit_mb_per_s=limit)
            case act.RunMigratedVm(machine=machine, postcopy=postcopy):
                on_fault = self._page_fault if postcopy else None
                adopted = self._host.run_migrated_vm(machine, on_fault)
                self._pending.append(inp.VmAdopted(runstate=adopted))
            case act.WakeVm():
                self._host.wake_vm()
            case act.WatchVmFaults():
                self._host.watch_vm_faults(self._page_fault)
            case _:
                pass

    def _page_fault(self, pfns: NDArray[np.intp]) -> None:
        if not self.done.is_set():
            self.feed(inp.PagesNeeded(pfns=pfns))

    def _stop_vm(self) -> None:
        try:
            previous = self._host.stop_vm_for_migration()
        except VmStopError as exc:
            self._pending.append(inp.VmStopFailed(previous=exc.previous, reason=exc.reason))
            return
        self._pending.append(inp.VmStopped(previous=previous))

    def _log(self, fact: act.LogFact) -> None:
        fields = {**self._context(), **fact.fields}  # now: a destination learns its id late
        log.log(LOG_LEVELS[fact.level], fact.event, **fields)

    def _finished(self) -> None:
        self.done.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for key in list(self.channels):
            writer = self._writers.get(key)
            self._close_channel(key, 0.0 if writer is None or writer.idle else _LINGER_S)
        for task in self._tasks - self._lingering:
            task.cancel()  # readers, connects, a machine still being built: nobody waits now

    # ------------------------------------------------------------------ channels

    async def _open(self, key: inp.ChannelKey, conn: SourceConnection) -> None:
        if self._address is None:
            self.feed(inp.ChannelOpenFailed(channel=key, reason="no address to connect to"))
            return
        try:
            channel = await connect_channel(
                self._address, conn, self._options(), clock=self._clock, tls=self._tls
            )
        except (NetIOError, OSError) as exc:
            self.feed(inp.ChannelOpenFailed(channel=key, reason=str(exc)))
            return
        if self.done.is_set():
            channel.close()
            return
        channel.send_guard = self._send_guard
        self.channels[key] = channel
        self.feed(inp.ChannelOpened(channel=key))

    async def _read(self, key: inp.ChannelKey, channel: ChannelLike) -> None:
        try:
            while True:
                event = cast("ProtocolEvent", await channel.next_event())
                if isinstance(event, PagesToDecode):
                    event = await decoded(channel, event)
                io_error = None
                if isinstance(event, ConnectionClosed) and channel.last_error is not None:
                    io_error = channel.last_error.strerror or str(channel.last_error)
                self.feed(inp.PeerEventReceived(channel=key, event=event, io_error=io_error))
                if isinstance(event, ConnectionClosed | PeerTimedOut):
                    return
        except ProtocolError as exc:
            self.feed(inp.ChannelFailed(channel=key, reason=str(exc), code=exc.code))
        except (NetIOError, OSError) as exc:
            if not channel.closed:
                self.feed(inp.ChannelFailed(channel=key, reason=str(exc), code=None))

    def _writer(self, key: inp.ChannelKey) -> _Writer | None:
        writer = self._writers.get(key)
        if writer is None and (channel := self.channels.get(key)) is not None:
            writer = self._writers[key] = _Writer(self, key, channel)
        return writer

    def _close_channel(self, key: inp.ChannelKey, linger_s: float) -> None:
        channel = self.channels.pop(key, None)
        writer = self._writers.pop(key, None)
        if channel is None:
            return
        if linger_s > 0:
            self._lingering.add(self._spawn(_linger(channel, linger_s, writer)))
            return
        if writer is not None:
            writer.cancel()
        channel.close()

    def _close_all(self) -> None:
        for key in list(self.channels):
            self._close_channel(key, 0.0)

    # ------------------------------------------------------------------ helpers

    async def _build(self, config: MachineConfig) -> None:
        try:
            machine = await self._host.build_machine(config)
        except (MemoryError, OSError, ValueError) as exc:
            self.feed(inp.MachinePrepareFailed(reason=str(exc)))
            return
        self.feed(inp.MachinePrepared(machine=machine))

    def _after(self) -> None:
        """Re-arm the one timer from the machine's deadline (aioquic's transmit())."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.done.is_set():
            return
        deadline = self.machine.next_deadline()
        if deadline is not None:
            delay_s = max(0.0, deadline - self._clock())
            self._timer = self._loop.call_later(delay_s, self.feed, inp.TimerFired())

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._lingering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("migration_task_crashed", exc_info=task.exception(), **self._context())

    async def _stop_tasks(self) -> None:
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)


class _Writer:
    """One channel's flushes, in order; each reports `SendDone` (or `ChannelFailed`)."""

    def __init__(self, runner: MachineRunner, key: inp.ChannelKey, channel: ChannelLike) -> None:
        self._runner = runner
        self._key = key
        self._channel = channel
        self._requests: deque[int] = deque()
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Nothing queued or in progress."""
        return not self._requests and (self._task is None or self._task.done())

    def request(self, keep_bytes: int) -> None:
        """Flush until at most `keep_bytes` are queued, after the requests before it."""
        self._requests.append(keep_bytes)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def cancel(self) -> None:
        """Stop flushing (the channel is being closed)."""
        self._requests.clear()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        runner, key = self._runner, self._key
        while self._requests:
            keep_bytes = self._requests.popleft()
            try:
                await self._channel.flush(keep_bytes=keep_bytes)
            except (NetIOError, OSError) as exc:
                self._requests.clear()
                if not self._channel.closed:
                    runner.feed(inp.ChannelFailed(channel=key, reason=str(exc), code=None))
                return
            await asyncio.sleep(0)  # let the vCPU run between batches
            runner.feed(inp.SendDone(channel=key))


async def _linger(channel: ChannelLike, linger_s: float, writer: _Writer | None) -> None:
    """Send what is queued (a last FAILED, say) for at most `linger_s`, then close."""
    if writer is not None:
        writer.cancel()
    try:
        with contextlib.suppress(NetIOError, OSError, TimeoutError):
            async with asyncio.timeout(linger_s):
                await channel.flush()
    finally:
        channel.close()  # also when the daemon's shutdown cancels the linger
