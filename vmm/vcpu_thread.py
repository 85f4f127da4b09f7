"""The vCPUs on a thread of their own, as QEMU runs each vCPU on its own thread.

On the event loop's thread the guest's page writes and the migration took turns: the busy
1 GiB `ab` guest (12 M page writes a second) took about half of the source's one busy core
during its first pass, while the machine's second core sat 60-80 % idle (docs/benchmarks.md,
runs M-N). Here the slices run on a thread of their own; numpy releases the GIL while a slice
writes guest RAM, so the guest and the event loop run on two cores at once.

The contract is a lock, `VcpuLock` (QEMU's big lock in spirit): the vCPU thread holds it while
it executes a slice, and the event loop's thread holds it whenever it reads or writes the
machine. The loop's side takes it at a few doors rather than everywhere:

- the migration engine's inputs (`vmm.runner.MachineRunner`: dirty-log syncs, batches, device
  state, stopping the VM at the switchover), and its start and `query-migrate`;
- the `VirtualMachine`'s own methods (run state, throttles) and the QMP queries that read it;
- a channel's sends while the queued page data views guest RAM (`Channel.send_guard`): the
  writer hashes what the kernel copied right after the copy, so the guest must not write in
  between. Pages sent from a copy (the XBZRLE cache) need no guard: the guest then runs while
  they are copied into the socket and hashed, which is where the two cores pay off.

Everything else the loop does (waiting for sockets, parsing QMP, sending pages from copies)
overlaps a slice. What a tick does never depends on when it runs, so the replay oracle holds.

The loop's thread has priority: once it asks for the lock, the vCPU thread starts no new slice
until it has been served (a slice lasts about `vmm.vm.SLICE_BUDGET_S`), so a busy guest can
neither starve the migration nor the monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

CLOSE_WAIT_S: Final = 1.0


class VcpuLock:
    """The lock between the event loop's thread (``with lock:``) and the vCPU thread.

    Reentrant on the loop's side (a QMP command that feeds the engine takes it twice); only the
    event loop's thread uses ``with``, only the vCPU thread `for_vcpu`.
    """

    def __init__(self) -> None:
        self._mutex = threading.RLock()
        self._loop_holds = 0  # nesting depth of the loop thread's `with`
        self._loop_idle = threading.Event()  # clear while the loop thread wants or holds it
        self._loop_idle.set()

    def __enter__(self) -> None:
        self._loop_holds += 1
        if self._loop_holds == 1:
            self._loop_idle.clear()  # the vCPU thread starts no new slice from now on
        self._mutex.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._mutex.release()
        self._loop_holds -= 1
        if not self._loop_holds:
            self._loop_idle.set()

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """On the loop's thread, holding it: the guest may run meanwhile (nested holds too).

        For work that reads guest RAM whatever the guest writes to it meanwhile: copying whole
        pages into the XBZRLE cache, which sends exactly what was copied.
        """
        depth = self._loop_holds
        for _ in range(depth):
            self._mutex.release()
        self._loop_holds = 0
        self._loop_idle.set()
        try:
            yield
        finally:
            if depth:
                self._loop_idle.clear()
                for _ in range(depth):
                    self._mutex.acquire()
                self._loop_holds = depth

    @contextlib.contextmanager
    def for_vcpu(self) -> Iterator[None]:
        """The vCPU thread's turn: after the loop thread is served, for one slice."""
        self._loop_idle.wait()
        with self._mutex:
            yield


class VcpuThread:
    """Runs `step` on a thread of its own, under the lock, for as long as it asks to go on.

    Args:
        lock: the machine's lock (`step` runs holding it).
        step: one look at the machine: run a slice and return 0, return the seconds to sleep
            before the next look (ahead of time, or throttled), or return None to park (the
            machine stopped, or wants its vCPU on the loop: postcopy).
    """

    def __init__(self, lock: VcpuLock, step: Callable[[], float | None]) -> None:
        self._lock = lock
        self._step = step
        self._go = threading.Event()  # set: look again now (kicked, or unparked)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parked: asyncio.Future[None] | None = None

    async def run_until_parked(self) -> None:
        """Let the thread run until `step` parks it (its exception, if it raised).

        Cancelled: the thread is stopped (after its slice) before this returns.
        """
        loop = self._loop = asyncio.get_running_loop()
        parked = self._parked = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="vcpu", daemon=True)
            self._thread.start()
        self._go.set()
        try:
            await parked
        except asyncio.CancelledError:
            self.close()
            raise

    def kick(self) -> None:
        """Look at the machine again now (a sleep for pacing ends early)."""
        self._go.set()

    def post(self, callback: Callable[..., object], *args: object) -> None:
        """Call `callback(*args)` on the event loop's thread (from the vCPU thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(callback, *args)

    def close(self) -> None:
        """Stop the thread (it finishes its slice first); idempotent."""
        self._closed = True
        self._go.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT_S)  # a thread still waiting for the lock exits once it gets it

    def _main(self) -> None:
        wait_s: float | None = None  # None: parked until `run_until_parked`
        while True:
            if wait_s is None:
                self._go.wait()
            elif wait_s > 0:
                self._go.wait(wait_s)
            if self._closed:
                return
            try:
                with self._lock.for_vcpu():
                    self._go.clear()  # a kick from here on makes the next look immediate
                    if self._closed:
                        return
                    wait_s = self._step()
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
                self.post(self._settle, exc)
                return
            if wait_s is None:
                self.post(self._settle, None)

    def _settle(self, exc: BaseException | None) -> None:
        parked = self._parked
        if parked is None or parked.done():
            return
        if exc is None:
            parked.set_result(None)
        else:
            parked.set_exception(exc)
