"""Role-agnostic bookkeeping of each stream: the state tables plus the section registry.

The source runs a ``MainTracker`` over what it sends and a ``ReturnTracker`` over what it
receives; the destination does the opposite. Every check raises ``LocalProtocolError``; the
receive side converts it (see ``protocol.reader``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from protocol import events as ev
from protocol.config import DeviceRef, MigrationConfiguration
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import main_input, part_input
from protocol.meta import bad
from protocol.postcopy import check_ranges_fit
from protocol.states import (
    MainInput,
    MainState,
    ReturnInput,
    ReturnState,
    StreamMode,
    main_transition,
    return_transition,
    stream_mode,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

RAM_IDSTR: Final = "ram"
_RAM_SETUP_KEYS: Final = frozenset({"ram_size", "page_size"})


def unexpected(message: str) -> LocalProtocolError:
    """An UNEXPECTED_SECTION error (to raise)."""
    return LocalProtocolError(message, code=ErrorCode.UNEXPECTED_SECTION)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Section:
    idstr: str
    is_ram: bool


class MainTracker:
    """The main stream's state, configuration and open sections."""

    def __init__(self, mode: StreamMode) -> None:
        self.mode = mode
        self.state = MainState.IDLE
        self.version: int | None = None
        self.config: MigrationConfiguration | None = None
        self.ram_section_id: int | None = None
        self.resolve_id: str | None = None
        self.channel: ev.ChannelAnnounced | None = None
        self.advised = False
        self._iterable: dict[int, _Section] = {}
        self._started: set[tuple[str, int]] = set()
        self._full: dict[int, DeviceRef] = {}

    def idstr_of(self, section_id: int) -> str | None:
        """The idstr a section id was opened with, if any."""
        if section_id in self._iterable:
            return self._iterable[section_id].idstr
        full = self._full.get(section_id)
        return full.idstr if full is not None else None

    def require_config(self) -> MigrationConfiguration:
        """The configuration (only called in states that follow it)."""
        if self.config is None:
            msg = "no configuration yet"
            raise unexpected(msg)
        return self.config

    def header(self, version: int) -> None:
        """The stream header; a network stream of version 3 or later expects CHANNEL first."""
        self.state = main_transition(self.mode, self.state, MainInput.HEADER)
        self.mode = stream_mode(return_path=self.mode is not StreamMode.FILE, version=version)
        self.version = version

    def join(self, config: MigrationConfiguration) -> None:
        """A multifd (or preempt) channel carries pages of ``config``'s migration (sent on main).

        Raises:
            LocalProtocolError: the channel is not a multifd or preempt channel of that migration.
        """
        if self.state is not MainState.MULTIFD or self.config is not None:
            msg = f"only a new multifd channel joins a migration, not one in state {self.state}"
            raise unexpected(msg)
        self._check_channel(config.migration_id, "the joined configuration")
        self.config = config

    def resume(
        self, config: MigrationConfiguration, ram_section_id: int, *, advised: bool = False
    ) -> None:
        """A recover channel takes up ``config``'s migration, its RAM in ``ram_section_id``.

        Raises:
            LocalProtocolError: the channel is not a new recover channel of that migration.
        """
        if self.state is not MainState.RECOVER_OPENED or self.config is not None:
            msg = f"only a new recover channel resumes a migration, not one in state {self.state}"
            raise unexpected(msg)
        self._check_channel(config.migration_id, "the resumed configuration")
        self.config = config
        self.ram_section_id = ram_section_id
        self.advised = advised  # a resumed precopy that had POSTCOPY_ADVISE may still switch
        self._iterable[ram_section_id] = _Section(idstr="ram", is_ram=True)

    def check_input(self, event: MainInput) -> None:
        """Is ``event`` legal now (header-time check, nothing applied)."""
        main_transition(self.mode, self.state, event)

    def check_part(self, section_id: int, *, end: bool) -> bool:
        """Is a PART/END for ``section_id`` legal now; return whether it is the RAM section."""
        main_transition(self.mode, self.state, part_input(end=end))
        section = self._iterable.get(section_id)
        if section is None:
            msg = f"section {section_id} was not opened by SECTION_START"
            raise unexpected(msg)
        # No "already ended" check: PART is illegal once SWITCHOVER_START was sent, and the final
        # pass of a section may span several END frames (frames are size-bounded).
        return section.is_ram

    def accept(self, event: ev.Event) -> None:
        """Check a whole main-stream event and apply it."""
        if isinstance(event, ev.RamPagesReceived | ev.SectionPartReceived):
            self._accept_part(event)
            return
        after = main_transition(self.mode, self.state, main_input(event))
        if isinstance(event, ev.ChannelAnnounced):
            self.channel = event
        elif isinstance(event, ev.ConfigurationReceived):
            self._check_channel(event.config.migration_id, "CONFIGURATION")
            self.config = event.config
        elif isinstance(event, ev.SectionStarted):
            self._open(event)
        elif isinstance(event, ev.DeviceStateReceived):
            self._full_section(event)
        elif isinstance(event, ev.PagesDiscarded):
            what = "POSTCOPY_RAM_DISCARD"
            check_ranges_fit(event.ranges, self.require_config().ram_pages, what)
        elif isinstance(event, ev.ResolveRequested):
            self._check_channel(event.migration_id, "RESOLVE")
            self.resolve_id = event.migration_id
        elif isinstance(event, ev.PrecopyResumed) and self.advised:
            after = MainState.ADVISED_ITERATING  # it may still switch to postcopy
        self.state = after

    def _check_channel(self, migration_id: str, what: str) -> None:
        if self.channel is not None and self.channel.migration_id != migration_id:
            msg = (
                f"{what} names migration {migration_id!r}, the CHANNEL handshake "
                f"{self.channel.migration_id!r}"
            )
            raise LocalProtocolError(msg, code=ErrorCode.CONFIG_MISMATCH)

    def _accept_part(self, event: ev.RamPagesReceived | ev.SectionPartReceived) -> None:
        after = main_transition(self.mode, self.state, part_input(end=event.end))
        is_ram = self.check_part(event.section_id, end=event.end)
        if is_ram != isinstance(event, ev.RamPagesReceived):
            section = self._iterable[event.section_id]
            kind = "is" if is_ram else "is not"
            msg = f"section {event.section_id} {section.idstr!r} {kind} the RAM section"
            raise unexpected(msg)
        self.state = after

    def _open(self, event: ev.SectionStarted) -> None:
        sid = event.section_id
        if sid in self._iterable or sid in self._full:
            msg = f"section id {sid} is already in use"
            raise unexpected(msg)
        if (event.idstr, event.instance_id) in self._started:
            msg = f"{event.idstr!r} instance {event.instance_id} was already started"
            raise unexpected(msg)
        is_ram = event.idstr == RAM_IDSTR
        if is_ram:
            self._check_ram_setup(event.setup)
        self._iterable[sid] = _Section(idstr=event.idstr, is_ram=is_ram)
        self._started.add((event.idstr, event.instance_id))
        if is_ram:
            self.ram_section_id = sid

    def _check_ram_setup(self, setup: Mapping[str, Any]) -> None:
        if self.ram_section_id is not None:
            msg = "a second RAM section"
            raise unexpected(msg)
        if set(setup) != _RAM_SETUP_KEYS:
            msg = f"RAM setup must be {{ram_size, page_size}}, not {sorted(setup)}"
            raise bad(msg)
        config = self.require_config()
        wanted = {"ram_size": config.ram_size, "page_size": config.page_size}
        if any(type(setup[k]) is not int or setup[k] != v for k, v in wanted.items()):
            msg = f"RAM setup {dict(setup)} differs from the configuration {wanted}"
            raise LocalProtocolError(msg, code=ErrorCode.CONFIG_MISMATCH)

    def _full_section(self, event: ev.DeviceStateReceived) -> None:
        ref = DeviceRef(
            idstr=event.idstr, instance_id=event.instance_id, version_id=event.version_id
        )
        if ref not in self.require_config().devices:
            msg = (
                f"device {event.idstr!r} instance {event.instance_id} version "
                f"{event.version_id} is not listed in the configuration"
            )
            raise unexpected(msg)
        if event.section_id in self._iterable or self._full.get(event.section_id, ref) != ref:
            msg = f"section id {event.section_id} is already in use by another entry"
            raise unexpected(msg)
        self._full[event.section_id] = ref


RETURN_INPUTS_OF: Final[dict[type[ev.Event], ReturnInput]] = {
    ev.ReturnPathAcked: ReturnInput.OPEN_ACK,
    ev.PongReceived: ReturnInput.PONG,
    ev.PagesRequested: ReturnInput.REQ_PAGES,
    ev.ReceivedBitmap: ReturnInput.RECV_BITMAP,
    ev.ResumePointReported: ReturnInput.RESUME_POINT,
    ev.LoadCompleted: ReturnInput.LOADED,
    ev.DestinationResumed: ReturnInput.RESUMED,
    ev.DestinationFailed: ReturnInput.FAILED,
    ev.OutcomeReported: ReturnInput.OUTCOME,
}


class ReturnTracker:
    """The return path's state."""

    def __init__(self) -> None:
        self.state = ReturnState.IDLE
        self.version: int | None = None

    def header(self, version: int, main: MainTracker) -> None:
        """The return-path stream header."""
        self.state = return_transition(self.state, ReturnInput.HEADER, main.state)
        self.version = version

    def check_input(self, event: ReturnInput, main: MainTracker) -> None:
        """Is ``event`` legal now (nothing applied)."""
        return_transition(self.state, event, main.state)

    def accept(self, event: ev.Event, main: MainTracker) -> None:
        """Check a whole return-path event and apply it."""
        after = return_transition(self.state, RETURN_INPUTS_OF[type(event)], main.state)
        if isinstance(event, ev.ReturnPathAcked) and event.version != self.version:
            msg = f"OPEN_ACK names version {event.version}, the return path is {self.version}"
            raise LocalProtocolError(msg, code=ErrorCode.UNSUPPORTED_VERSION)
        if isinstance(event, ev.PagesRequested):
            check_ranges_fit(event.ranges, main.require_config().ram_pages, "REQ_PAGES")
        if isinstance(event, ev.ReceivedBitmap):
            _check_bitmap_fits(event, main.require_config().ram_pages)
        if isinstance(event, ev.OutcomeReported):
            if main.resolve_id is None:
                msg = "OUTCOME on a connection that sent no RESOLVE"
                raise unexpected(msg)
            if event.migration_id != main.resolve_id:
                msg = f"OUTCOME names {event.migration_id!r}, RESOLVE asked for {main.resolve_id!r}"
                raise bad(msg)
        self.state = after


def _check_bitmap_fits(event: ev.ReceivedBitmap, ram_pages: int) -> None:
    """RECV_BITMAP covers whole bytes of pages inside RAM (BAD_METADATA otherwise)."""
    if event.first_pfn % 8 or event.first_pfn + event.n_pages > ram_pages:
        msg = (
            f"RECV_BITMAP: pages {event.first_pfn}..{event.first_pfn + event.n_pages} do not "
            f"start on a byte of the bitmap or go past the guest's {ram_pages} pages"
        )
        raise bad(msg)
