"""Decode a captured main stream into a JSON-able report (QEMU's analyze-migration.py, ours).

``analyze_stream`` is pure: it takes the stream's bytes in chunks and returns a dict. It decodes
through a file-mode ``DestConnection`` with no RAM attached, so every check of a real receiver
applies; a damaged or truncated stream yields everything decoded before the damage plus an
``"error"`` entry, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from protocol import events as ev
from protocol.codes import FRAME_FOOTER_BYTES, FRAME_HEADER_BYTES, MAIN_MAGIC, STREAM_HEADER_BYTES
from protocol.dest import DestConnection
from protocol.errors import ErrorCode, RemoteProtocolError
from protocol.limits import Limits

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from protocol.errors import FrameInfo

_PIECE_BYTES: Final = 1 << 20
_COMMANDS: Final[dict[type[ev.Event], str]] = {
    ev.ReturnPathRequested: "OPEN_RETURN_PATH",
    ev.PingReceived: "PING",
    ev.SwitchoverStarted: "SWITCHOVER_START",
    ev.HandoverReceived: "HANDOVER",
    ev.AbortReceived: "ABORT",
    ev.ResolveRequested: "RESOLVE",
    ev.ChannelAnnounced: "CHANNEL",
}


def analyze_stream(
    chunks: Iterable[bytes | bytearray | memoryview],
    *,
    limits: Limits = Limits(),  # noqa: B008 - frozen, hence safe as a default
) -> dict[str, Any]:
    """Decode a main stream (file mode) and describe it.

    Returns:
        ``header``, ``configuration``, ``frames`` (index, offset, kind, section, sizes, page
        counts), ``sections`` (per section id), ``ram`` (page totals), ``devices`` (FULL sections
        with field values typed through the VMDESCRIPTION), ``vmdescription``, ``end``
        (``"clean"``, ``"unclean"`` or ``"incomplete"``) and, for a damaged stream, ``error``
        (code, message, frame index, offset).
    """
    analysis = _Analysis()
    conn = DestConnection(return_path=False, limits=limits, timeouts=None, now=0.0)
    try:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            for start in range(0, view.nbytes, _PIECE_BYTES):
                conn.receive_data(view[start : start + _PIECE_BYTES], 0.0)
                analysis.drain(conn)
        conn.receive_eof(0.0)
        analysis.drain(conn)
    except RemoteProtocolError as exc:
        analysis.fail(exc)
    return analysis.report()


@dataclass(kw_only=True)
class _Analysis:
    header: dict[str, Any] | None = None
    configuration: dict[str, Any] | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[int, dict[str, Any]] = field(default_factory=dict)
    ram: dict[str, int] = field(
        default_factory=lambda: {"normal_pages": 0, "zero_pages": 0, "data_bytes": 0}
    )
    states: list[ev.DeviceStateReceived] = field(default_factory=list)
    vmdesc: Mapping[str, Any] | None = None
    end: str = "incomplete"
    error: dict[str, Any] | None = None
    next_offset: int = STREAM_HEADER_BYTES

    def drain(self, conn: DestConnection) -> None:
        while (event := conn.next_event()) is not None:
            self.record(event)
            if isinstance(event, ev.ConnectionClosed) and not event.clean:
                self.end = "unclean"
                self.error = {
                    "code": ErrorCode.TRUNCATED.name,
                    "message": f"the stream ended early, in state {conn.their_state.value}",
                    "frame": len(self.frames),
                    "offset": self.next_offset,
                }

    def record(self, event: ev.Event) -> None:
        if isinstance(event, ev.StreamStarted):
            self.header = {"magic": MAIN_MAGIC.decode(), "version": event.version}
        elif isinstance(event, ev.ConnectionClosed):
            self.end = "clean" if event.clean else "unclean"
        frame: FrameInfo | None = getattr(event, "frame", None)
        if frame is None:
            return
        entry = _frame_entry(frame)
        entry.update(self._describe(event, frame))
        self.frames.append(entry)
        self.next_offset = frame.offset + FRAME_HEADER_BYTES + frame.meta_len + frame.data_len
        self.next_offset += FRAME_FOOTER_BYTES

    def _describe(self, event: ev.Event, frame: FrameInfo) -> dict[str, Any]:
        if isinstance(event, ev.ConfigurationReceived):
            self.configuration = _configuration(event)
            return {}
        if isinstance(event, ev.SectionStarted | ev.DeviceStateReceived):
            return self._section(event)
        if isinstance(event, ev.RamPagesReceived | ev.SectionPartReceived):
            return self._part(event, frame)
        if isinstance(event, ev.DescriptionReceived):
            self.vmdesc = event.vmdesc
            return {}
        if type(event) in _COMMANDS:
            return _command(event)
        return {}

    def _section(self, event: ev.SectionStarted | ev.DeviceStateReceived) -> dict[str, Any]:
        entry = {
            "idstr": event.idstr,
            "instance_id": event.instance_id,
            "version_id": event.version_id,
        }
        section = self.sections.setdefault(
            event.section_id, {"section_id": event.section_id, **entry, "frames": 0}
        )
        section["frames"] += 1
        if isinstance(event, ev.DeviceStateReceived):
            section["type"] = "full"
            self.states.append(event)
        else:
            section["type"] = "iterable"
            section["setup"] = jsonable(event.setup)
        return entry

    def _part(
        self, event: ev.RamPagesReceived | ev.SectionPartReceived, frame: FrameInfo
    ) -> dict[str, Any]:
        section = self.sections.get(event.section_id, {})
        section["frames"] = section.get("frames", 0) + 1
        entry: dict[str, Any] = {"idstr": section.get("idstr")}
        if isinstance(event, ev.RamPagesReceived):
            pages = {"normal": event.normal_pages, "zero": event.zero_pages}
            if event.xbzrle_pages:
                pages["xbzrle"] = event.xbzrle_pages
            entry.update(runs=len(event.runs), pages=pages)
            totals = section.setdefault("pages", {"normal": 0, "zero": 0})
            totals["normal"] += event.normal_pages
            totals["zero"] += event.zero_pages
            self.ram["normal_pages"] += event.normal_pages
            self.ram["zero_pages"] += event.zero_pages
            self.ram["data_bytes"] += frame.data_len
        return entry

    def fail(self, exc: RemoteProtocolError) -> None:
        self.end = "error"
        self.error = {
            "code": exc.code.name,
            "message": str(exc),
            "frame": exc.frame.index if exc.frame is not None else None,
            "offset": exc.frame.offset if exc.frame is not None else 0,
        }

    def report(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "header": self.header,
            "configuration": self.configuration,
            "frames": self.frames,
            "sections": sorted(self.sections.values(), key=lambda s: s["section_id"]),
            "ram": self.ram,
            "devices": [describe_device(state, self.vmdesc) for state in self.states],
            "vmdescription": jsonable(self.vmdesc) if self.vmdesc is not None else None,
            "end": self.end,
        }
        if self.error is not None:
            result["error"] = self.error
        return result


def _frame_entry(frame: FrameInfo) -> dict[str, Any]:
    return {
        "index": frame.index,
        "offset": frame.offset,
        "kind": frame.kind_name,
        "section_id": frame.section_id,
        "meta_bytes": frame.meta_len,
        "data_bytes": frame.data_len,
    }


def _configuration(event: ev.ConfigurationReceived) -> dict[str, Any]:
    config = event.config
    return {
        "migration_id": config.migration_id,
        "machine": config.machine,
        "page_size": config.page_size,
        "ram_size": config.ram_size,
        "devices": [[d.idstr, d.instance_id, d.version_id] for d in config.devices],
        "capabilities": list(config.capabilities),
        "uuid": config.uuid,
        "vm": jsonable(config.vm),
    }


def _command(event: ev.Event) -> dict[str, Any]:
    entry: dict[str, Any] = {"command": _COMMANDS[type(event)]}
    if isinstance(event, ev.PingReceived):
        entry["value"] = event.value
    elif isinstance(event, ev.AbortReceived):
        entry.update(code=event.code.name, reason=event.reason)
    elif isinstance(event, ev.ResolveRequested):
        entry["migration_id"] = event.migration_id
    elif isinstance(event, ev.ChannelAnnounced):
        entry.update(migration_id=event.migration_id, role=str(event.role), index=event.index)
    return entry


# --------------------------------------------------------------------------- device fields


def describe_device(
    state: ev.DeviceStateReceived, vmdesc: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A FULL section's fields, typed through its VMDESCRIPTION entry when there is one."""
    desc = _find_device(vmdesc, state.idstr, state.instance_id)
    result = {
        "section_id": state.section_id,
        "idstr": state.idstr,
        "instance_id": state.instance_id,
        "version_id": state.version_id,
        "described": desc is not None,
    }
    result.update(_describe_vmstate(state.state, desc or {}))
    return result


def _find_device(
    vmdesc: Mapping[str, Any] | None, idstr: str, instance_id: int
) -> Mapping[str, Any] | None:
    devices = vmdesc.get("devices") if vmdesc is not None else None
    if not isinstance(devices, list):
        return None
    for device in devices:
        if (
            isinstance(device, dict)
            and device.get("name") == idstr
            and device.get("instance_id", 0) == instance_id
        ):
            return device
    return None


def _describe_vmstate(state: Mapping[str, Any], desc: Mapping[str, Any]) -> dict[str, Any]:
    """``{"fields": [...], "subsections": {...}}`` of one VMState (or subsection)."""
    values = state.get("fields")
    values = values if isinstance(values, dict) else {}
    types = _field_types(desc.get("fields"))
    fields = [
        {"name": name, "type": types.get(name, _type_name(value)), "value": jsonable(value)}
        for name, value in values.items()
    ]
    subsections: dict[str, Any] = {}
    raw_subs = state.get("subsections")
    sub_descs = _subsection_descs(desc.get("subsections"))
    if isinstance(raw_subs, dict):
        for name, sub in raw_subs.items():
            if isinstance(sub, dict):
                entry = _describe_vmstate(sub, sub_descs.get(str(name), {}))
                entry["version_id"] = jsonable(sub.get("version_id"))
                subsections[str(name)] = entry
    extra = sorted(str(k) for k in state if k not in {"fields", "subsections"})
    result: dict[str, Any] = {"fields": fields, "subsections": subsections}
    if extra:
        result["unknown_keys"] = extra
    return result


def _field_types(fields: object) -> dict[str, str]:
    if not isinstance(fields, list):
        return {}
    return {
        str(f["name"]): str(f.get("type", "?"))
        for f in fields
        if isinstance(f, dict) and "name" in f
    }


def _subsection_descs(subsections: object) -> dict[str, Mapping[str, Any]]:
    """Subsection descriptions by name (``name``, or QEMU's and vmsim's ``vmsd_name``)."""
    if not isinstance(subsections, list):
        return {}
    named = (s for s in subsections if isinstance(s, dict))
    return {str(s.get("name", s.get("vmsd_name"))): s for s in named}


def _type_name(value: object) -> str:
    if isinstance(value, bytes):
        return "buffer"
    return type(value).__name__


def jsonable(value: object) -> Any:  # noqa: ANN401 - JSON values are any of several types
    """``value`` with bytes as hex strings and map keys as strings.

    Recursion is safe: decoded metadata nests at most ``Limits.max_depth`` deep.
    """
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {
            (k.hex() if isinstance(k, bytes) else str(k)): jsonable(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
