"""Frame metadata to events, per frame kind (both directions), and the tables' input of each.

The same decoders check what we send and what we receive: the sender builds a metadata map,
decodes it here (so it sends only what a peer accepts) and then packs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from protocol import events as ev
from protocol.codec import Codec
from protocol.codes import (
    CHECKSUM_NONE,
    MAX_MULTIFD_CHANNELS,
    SUPPORTED_VERSIONS,
    ChannelRole,
    Command,
    FrameKind,
    Outcome,
    ReturnKind,
)
from protocol.config import MAX_IDSTR_BYTES, MAX_NAME_BYTES, decode_configuration
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.meta import (
    U16_MAX,
    U32_MAX,
    U64_MAX,
    bad,
    check_keys,
    take_bin,
    take_bool,
    take_int,
    take_map,
    take_str,
    take_u32,
)
from protocol.postcopy import MAX_DISCARD_RANGES, MAX_REQUEST_RANGES, unpack_ranges
from protocol.states import MainInput, ReturnInput

if TYPE_CHECKING:
    from collections.abc import Callable

    from protocol.limits import Limits
    from protocol.meta import MetaMap

MAX_DIGEST_BYTES: Final = 256

_SECTION_KEYS: Final = ("idstr", "instance_id", "version_id")


def _error_code(meta: MetaMap) -> ErrorCode:
    value = take_int(meta, "code", 0, U16_MAX)
    try:
        return ErrorCode(value)
    except ValueError:
        msg = f"'code' = {value} is not an ErrorCode"
        raise bad(msg) from None


def _reason(meta: MetaMap, limits: Limits) -> str:
    return take_str(meta, "reason", max_bytes=limits.max_str_len, nonempty=False)


# --------------------------------------------------------------------------- main stream


def decode_section_start(section_id: int, meta: MetaMap, _limits: Limits) -> ev.SectionStarted:
    """SECTION_START: ``{idstr, instance_id, version_id, setup}``."""
    check_keys(meta, (*_SECTION_KEYS, "setup"), "SECTION_START")
    return ev.SectionStarted(
        section_id=section_id,
        idstr=take_str(meta, "idstr", max_bytes=MAX_IDSTR_BYTES),
        instance_id=take_u32(meta, "instance_id"),
        version_id=take_u32(meta, "version_id"),
        setup=take_map(meta, "setup"),
    )


def decode_section_full(section_id: int, meta: MetaMap, _limits: Limits) -> ev.DeviceStateReceived:
    """SECTION_FULL: ``{idstr, instance_id, version_id, state}``."""
    check_keys(meta, (*_SECTION_KEYS, "state"), "SECTION_FULL")
    return ev.DeviceStateReceived(
        section_id=section_id,
        idstr=take_str(meta, "idstr", max_bytes=MAX_IDSTR_BYTES),
        instance_id=take_u32(meta, "instance_id"),
        version_id=take_u32(meta, "version_id"),
        state=take_map(meta, "state"),
    )


def decode_section_part(section_id: int, meta: MetaMap, *, end: bool) -> ev.SectionPartReceived:
    """SECTION_PART/END of a non-RAM section: ``{payload}``."""
    check_keys(meta, ("payload",), "SECTION_END" if end else "SECTION_PART")
    return ev.SectionPartReceived(section_id=section_id, end=end, payload=take_map(meta, "payload"))


def decode_ram_meta(meta: MetaMap, what: str) -> bytes:
    """RAM SECTION_PART/END, or PAGES (``what``): ``{runs, eos}``; returns the packed run table."""
    check_keys(meta, ("runs", "eos"), what)
    if not take_bool(meta, "eos"):
        msg = "'eos' must be true"
        raise bad(msg)
    return take_bin(meta, "runs")


def decode_ram_section_meta(meta: MetaMap, what: str) -> tuple[bytes, bytes | None]:
    """RAM SECTION_PART/END: ``{runs, eos}``, plus ``xbzrle`` (the deltas' lengths) with XBZRLE."""
    if "xbzrle" not in meta:
        return decode_ram_meta(meta, what), None
    check_keys(meta, ("runs", "eos", "xbzrle"), what)
    runs = decode_ram_meta({"runs": meta["runs"], "eos": meta["eos"]}, what)
    return runs, take_bin(meta, "xbzrle")


def decode_pages_meta(meta: MetaMap) -> tuple[bytes, Codec | None]:
    """PAGES: ``{runs, eos}``, plus ``codec`` when the page data is compressed."""
    if "codec" not in meta:
        return decode_ram_meta(meta, "PAGES"), None
    check_keys(meta, ("runs", "eos", "codec"), "PAGES")
    value = take_str(meta, "codec", max_bytes=MAX_NAME_BYTES)
    try:
        codec = Codec(value)
    except ValueError:
        known = ", ".join(c.value for c in Codec)
        msg = f"unknown page codec {value!r} (this peer knows {known})"
        raise LocalProtocolError(msg, code=ErrorCode.UNSUPPORTED) from None
    return decode_ram_meta({"runs": meta["runs"], "eos": meta["eos"]}, "PAGES"), codec


def _decode_configuration(_sid: int, meta: MetaMap, limits: Limits) -> ev.Event:
    return ev.ConfigurationReceived(config=decode_configuration(meta, limits))


def _decode_eof(_sid: int, meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, (), "EOF")
    return ev.StreamEnded()


def _decode_vmdesc(_sid: int, meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, ("vmdesc",), "VMDESCRIPTION")
    return ev.DescriptionReceived(vmdesc=take_map(meta, "vmdesc"))


def _decode_command(_sid: int, meta: MetaMap, limits: Limits) -> ev.Event:
    if "cmd" not in meta:
        msg = "COMMAND metadata: missing key 'cmd'"
        raise bad(msg)
    value = take_int(meta, "cmd", 0, U16_MAX)
    try:
        command = Command(value)
    except ValueError:
        msg = f"unknown command {value}"
        raise LocalProtocolError(msg, code=ErrorCode.UNKNOWN_COMMAND) from None
    keys, build = _COMMANDS[command]
    optional = tuple(key for key in _OPTIONAL_KEYS.get(command, ()) if key in meta)
    check_keys(meta, ("cmd", *keys, *optional), command.name)
    return build(meta, limits)


def _decode_channel(meta: MetaMap, _limits: Limits) -> ev.ChannelAnnounced:
    value = take_str(meta, "role", max_bytes=MAX_NAME_BYTES)
    try:
        role = ChannelRole(value)
    except ValueError:
        known = ", ".join(r.value for r in ChannelRole)
        msg = f"unknown channel role {value!r} (this peer knows {known})"
        raise bad(msg) from None
    index = take_int(meta, "index", 0, U16_MAX)
    if role is ChannelRole.MULTIFD:
        if index >= MAX_MULTIFD_CHANNELS:
            msg = f"a multifd channel's index is below {MAX_MULTIFD_CHANNELS}, not {index}"
            raise bad(msg)
    elif index:
        msg = f"a {role} channel has index 0, not {index}"
        raise bad(msg)
    checked = True
    if "checksum" in meta:
        value = take_str(meta, "checksum", max_bytes=MAX_NAME_BYTES)
        if value != CHECKSUM_NONE:
            msg = f"CHANNEL 'checksum' can only be {CHECKSUM_NONE!r}, not {value!r}"
            raise bad(msg)
        checked = False
    return ev.ChannelAnnounced(
        migration_id=take_str(meta, "migration_id", max_bytes=MAX_NAME_BYTES),
        role=role,
        index=index,
        checked=checked,
    )


def _decode_discard(meta: MetaMap) -> ev.PagesDiscarded:
    data = take_bin(meta, "ranges")
    what = "POSTCOPY_RAM_DISCARD"
    ranges = unpack_ranges(data, max_ranges=MAX_DISCARD_RANGES, ascending=True, what=what)
    return ev.PagesDiscarded(ranges=ranges)


_OPTIONAL_KEYS: Final[dict[Command, tuple[str, ...]]] = {Command.CHANNEL: ("checksum",)}

_COMMANDS: Final[dict[Command, tuple[tuple[str, ...], Callable[[MetaMap, Limits], ev.Event]]]] = {
    Command.OPEN_RETURN_PATH: ((), lambda _m, _l: ev.ReturnPathRequested()),
    Command.PING: (("value",), lambda m, _l: ev.PingReceived(value=take_u32(m, "value"))),
    Command.SWITCHOVER_START: ((), lambda _m, _l: ev.SwitchoverStarted()),
    Command.POSTCOPY_ADVISE: ((), lambda _m, _l: ev.PostcopyAdvised()),
    Command.POSTCOPY_RAM_DISCARD: (("ranges",), lambda m, _l: _decode_discard(m)),
    Command.POSTCOPY_LISTEN: ((), lambda _m, _l: ev.PostcopyListening()),
    Command.POSTCOPY_RUN: ((), lambda _m, _l: ev.PostcopyRunning()),
    Command.POSTCOPY_RESUME: ((), lambda _m, _l: ev.PostcopyResumed()),
    Command.PRECOPY_RESUME: ((), lambda _m, _l: ev.PrecopyResumed()),
    Command.HANDOVER: ((), lambda _m, _l: ev.HandoverReceived()),
    Command.ABORT: (
        ("code", "reason"),
        lambda m, lim: ev.AbortReceived(code=_error_code(m), reason=_reason(m, lim)),
    ),
    Command.RESOLVE: (
        ("migration_id",),
        lambda m, _l: ev.ResolveRequested(
            migration_id=take_str(m, "migration_id", max_bytes=MAX_NAME_BYTES)
        ),
    ),
    Command.CHANNEL: (("migration_id", "role", "index"), _decode_channel),
    Command.MULTIFD_SYNC: (
        ("pass",),
        lambda m, _l: ev.MultifdSynced(pass_number=take_u32(m, "pass")),
    ),
}

MAIN_DECODERS: Final[dict[FrameKind, Callable[[int, MetaMap, Limits], ev.Event]]] = {
    FrameKind.EOF: _decode_eof,
    FrameKind.SECTION_START: decode_section_start,
    FrameKind.SECTION_FULL: decode_section_full,
    FrameKind.VMDESCRIPTION: _decode_vmdesc,
    FrameKind.CONFIGURATION: _decode_configuration,
    FrameKind.COMMAND: _decode_command,
}
"""Decoders of the main-stream kinds other than SECTION_PART/END."""

MAIN_INPUTS: Final[dict[type[ev.Event], MainInput]] = {
    ev.ConfigurationReceived: MainInput.CONFIGURATION,
    ev.ReturnPathRequested: MainInput.OPEN_RETURN_PATH,
    ev.PingReceived: MainInput.PING,
    ev.SectionStarted: MainInput.SECTION_START,
    ev.DeviceStateReceived: MainInput.SECTION_FULL,
    ev.SwitchoverStarted: MainInput.SWITCHOVER_START,
    ev.StreamEnded: MainInput.EOF,
    ev.DescriptionReceived: MainInput.VMDESCRIPTION,
    ev.HandoverReceived: MainInput.HANDOVER,
    ev.AbortReceived: MainInput.ABORT,
    ev.ResolveRequested: MainInput.RESOLVE,
    ev.MultifdPagesReceived: MainInput.PAGES,
    ev.MultifdSynced: MainInput.MULTIFD_SYNC,
    ev.PostcopyAdvised: MainInput.POSTCOPY_ADVISE,
    ev.PagesDiscarded: MainInput.POSTCOPY_RAM_DISCARD,
    ev.PostcopyListening: MainInput.POSTCOPY_LISTEN,
    ev.PostcopyRunning: MainInput.POSTCOPY_RUN,
    ev.PostcopyResumed: MainInput.POSTCOPY_RESUME,
    ev.PrecopyResumed: MainInput.PRECOPY_RESUME,
}
"""The main table's input for each main-stream event (PART/END: see ``part_input``)."""

CHANNEL_INPUTS: Final[dict[ChannelRole, MainInput]] = {
    ChannelRole.MAIN: MainInput.CHANNEL_MAIN,
    ChannelRole.RESOLVE: MainInput.CHANNEL_RESOLVE,
    ChannelRole.MULTIFD: MainInput.CHANNEL_MULTIFD,
    ChannelRole.RECOVER: MainInput.CHANNEL_RECOVER,
    ChannelRole.PREEMPT: MainInput.CHANNEL_PREEMPT,
}
"""The main table's input for a CHANNEL handshake, by role."""


def main_input(event: ev.Event) -> MainInput:
    """The main table's input for a main-stream event other than PART/END."""
    if isinstance(event, ev.ChannelAnnounced):
        return CHANNEL_INPUTS[event.role]
    return MAIN_INPUTS[type(event)]


KIND_INPUTS: Final[dict[FrameKind, MainInput]] = {
    FrameKind.EOF: MainInput.EOF,
    FrameKind.SECTION_START: MainInput.SECTION_START,
    FrameKind.SECTION_PART: MainInput.SECTION_PART,
    FrameKind.SECTION_END: MainInput.SECTION_END,
    FrameKind.SECTION_FULL: MainInput.SECTION_FULL,
    FrameKind.VMDESCRIPTION: MainInput.VMDESCRIPTION,
    FrameKind.CONFIGURATION: MainInput.CONFIGURATION,
    FrameKind.PAGES: MainInput.PAGES,
}
"""The main table's input for each frame kind, known from the header (not COMMAND)."""

COMMAND_META: Final[dict[Command, tuple[str, ...]]] = {c: k for c, (k, _b) in _COMMANDS.items()}
"""Argument keys of each command."""


def part_input(*, end: bool) -> MainInput:
    """The input of a PART (``end`` False) or END frame."""
    return MainInput.SECTION_END if end else MainInput.SECTION_PART


# --------------------------------------------------------------------------- return path


def _decode_open_ack(meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, ("version",), "OPEN_ACK")
    version = take_int(meta, "version", 0, U16_MAX)
    if version not in SUPPORTED_VERSIONS:
        msg = f"OPEN_ACK names unsupported version {version}"
        raise LocalProtocolError(msg, code=ErrorCode.UNSUPPORTED_VERSION)
    return ev.ReturnPathAcked(version=version)


def _decode_pong(meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, ("value",), "PONG")
    return ev.PongReceived(value=take_u32(meta, "value"))


def _decode_req_pages(meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, ("ranges",), "REQ_PAGES")
    data = take_bin(meta, "ranges")
    ranges = unpack_ranges(data, max_ranges=MAX_REQUEST_RANGES, ascending=False, what="REQ_PAGES")
    return ev.PagesRequested(ranges=ranges)


def _decode_recv_bitmap(meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, ("first_pfn", "n_pages", "bitmap"), "RECV_BITMAP")
    first_pfn = take_u32(meta, "first_pfn")
    n_pages = take_int(meta, "n_pages", 1, U32_MAX)
    bitmap = take_bin(meta, "bitmap")
    if len(bitmap) != -(-n_pages // 8):
        msg = f"RECV_BITMAP: {len(bitmap)} bytes of bitmap for {n_pages} pages"
        raise bad(msg)
    return ev.ReceivedBitmap(first_pfn=first_pfn, n_pages=n_pages, bitmap=bitmap)


def _decode_resume_point(meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, ("ram_frames",), "RESUME_POINT")
    return ev.ResumePointReported(ram_frames=take_int(meta, "ram_frames", 0, U64_MAX))


def _decode_loaded(meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, ("digest", "normal_pages", "zero_pages", "devices"), "LOADED")
    digest = meta["digest"]
    return ev.LoadCompleted(
        digest=None if digest is None else take_str(meta, "digest", max_bytes=MAX_DIGEST_BYTES),
        normal_pages=take_int(meta, "normal_pages", 0, U64_MAX),
        zero_pages=take_int(meta, "zero_pages", 0, U64_MAX),
        devices=take_int(meta, "devices", 0, U64_MAX),
    )


def _decode_resumed(meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, ("runstate",), "RESUMED")
    return ev.DestinationResumed(runstate=take_str(meta, "runstate", max_bytes=MAX_NAME_BYTES))


def _decode_failed(meta: MetaMap, limits: Limits) -> ev.Event:
    check_keys(meta, ("code", "reason"), "FAILED")
    return ev.DestinationFailed(code=_error_code(meta), reason=_reason(meta, limits))


def _decode_outcome(meta: MetaMap, _limits: Limits) -> ev.Event:
    check_keys(meta, ("migration_id", "outcome"), "OUTCOME")
    value = take_str(meta, "outcome", max_bytes=MAX_NAME_BYTES)
    try:
        outcome = Outcome(value)
    except ValueError:
        msg = f"'outcome' = {value!r} is not one of {[o.value for o in Outcome]}"
        raise bad(msg) from None
    return ev.OutcomeReported(
        migration_id=take_str(meta, "migration_id", max_bytes=MAX_NAME_BYTES), outcome=outcome
    )


RETURN_DECODERS: Final[dict[ReturnKind, Callable[[MetaMap, Limits], ev.Event]]] = {
    ReturnKind.OPEN_ACK: _decode_open_ack,
    ReturnKind.PONG: _decode_pong,
    ReturnKind.REQ_PAGES: _decode_req_pages,
    ReturnKind.RECV_BITMAP: _decode_recv_bitmap,
    ReturnKind.RESUME_POINT: _decode_resume_point,
    ReturnKind.LOADED: _decode_loaded,
    ReturnKind.RESUMED: _decode_resumed,
    ReturnKind.FAILED: _decode_failed,
    ReturnKind.OUTCOME: _decode_outcome,
}
"""Decoders of the return-path kinds."""

RETURN_INPUTS: Final[dict[ReturnKind, ReturnInput]] = {
    ReturnKind.OPEN_ACK: ReturnInput.OPEN_ACK,
    ReturnKind.PONG: ReturnInput.PONG,
    ReturnKind.REQ_PAGES: ReturnInput.REQ_PAGES,
    ReturnKind.RECV_BITMAP: ReturnInput.RECV_BITMAP,
    ReturnKind.RESUME_POINT: ReturnInput.RESUME_POINT,
    ReturnKind.LOADED: ReturnInput.LOADED,
    ReturnKind.RESUMED: ReturnInput.RESUMED,
    ReturnKind.FAILED: ReturnInput.FAILED,
    ReturnKind.OUTCOME: ReturnInput.OUTCOME,
}
"""The return table's input for each return-path kind."""
