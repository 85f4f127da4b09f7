"""VMStateDescription: a device's versioned state contract (QEMU's VMState, Firecracker's Persist).

Saving yields plain values (it fails only when a hook does)::

    {"fields": {name: value, ...},
     "subsections": {name: {"version_id": v, "fields": {...}, "subsections": {...}}, ...}}

Loading validates the whole incoming state (versions, subsection names, every field's presence,
type and range, recursively) before it assigns anything, then runs pre_load, assigns, loads the
subsections and runs post_load, with QEMU's error wording.

Hooks fail by raising `HookError` (see its docstring for why an exception and not a result);
the description turns it into a `SaveHookError` or a `LoadHookError` naming the VMSD and the hook.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from vmsim.errors import (
    FieldError,
    HookError,
    LoadHookError,
    SaveHookError,
    UnknownSubsectionError,
    VersionTooNewError,
    VersionTooOldError,
    VMStateDefinitionError,
)
from vmsim.vmstate.fields import FieldKind

if TYPE_CHECKING:
    from vmsim.vmstate.fields import VMStateField

__all__ = ["MigrationPriority", "VMStateDescription"]

T = TypeVar("T")

_STATE_KEYS = frozenset({"fields", "subsections"})
_SUBSECTION_KEYS = frozenset({"version_id", "fields", "subsections"})


class MigrationPriority(IntEnum):
    """QEMU's MigrationPriority: higher priorities are saved and loaded first."""

    UNINITIALIZED = 0  # treated as DEFAULT when ordering entries
    LOW = 1
    DEFAULT = 2
    IOMMU = 3
    PCI_BUS = 4
    VIRTIO_MEM = 5
    APIC = 6
    GICV3_ITS = 7
    GICV3 = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class VMStateDescription(Generic[T]):
    """The state contract of one kind of device object T.

    Attributes:
        name: the VMSD name (vmdesc's vmsd_name; subsections are named "<parent>/<sub>").
        version_id: the version this code saves.
        minimum_version_id: the oldest version this code can load.
        fields: the fields, in stream order.
        subsections: optional parts, each sent only when its `needed` says so.
        needed: for a subsection (required there) or a whole device: send it at all?
        pre_save: called before the fields are read (QEMU's pre_save); may raise HookError.
        post_save: called after saving, and after a failure past pre_save, to undo pre_save.
        pre_load: called after validation, before any field is assigned; may raise HookError.
        post_load: called last with the incoming version_id; may raise HookError or
            InvalidStateError.
        early_setup: sent as a FULL section during setup rather than at completion.
        priority: the entry's place in the save and load order.
        unmigratable: the device blocks migration.
    """

    name: str
    version_id: int
    minimum_version_id: int = 0
    fields: tuple[VMStateField, ...] = ()
    subsections: tuple[VMStateDescription[T], ...] = ()
    needed: Callable[[T], bool] | None = None
    pre_save: Callable[[T], None] | None = None
    post_save: Callable[[T], None] | None = None
    pre_load: Callable[[T], None] | None = None
    post_load: Callable[[T, int], None] | None = None
    early_setup: bool = False
    priority: MigrationPriority = MigrationPriority.UNINITIALIZED
    unmigratable: bool = False

    def __post_init__(self) -> None:
        _check_definition(self)

    # ------------------------------------------------------------------ save

    def save(self, opaque: T, version_id: int | None = None) -> dict[str, object]:
        """Return the device's state as plain values (QEMU's vmstate_save_state).

        pre_save, the fields, the needed subsections (recursively), then post_save. A failed
        pre_save stops the save at once; a failure after it still runs post_save, so that it
        can undo what pre_save did, and the first failure is the one raised (as QEMU does).

        Args:
            opaque: the device object.
            version_id: save as this older version (fields newer than it are left out), for
                compatibility with older code; default: this VMSD's version_id.

        Raises:
            SaveHookError: a pre_save or post_save hook (here, in a subsection or in a struct
                field) raised HookError; names that VMSD and the hook.
        """
        version = self.version_id if version_id is None else version_id
        if self.pre_save is not None:
            pre_save = functools.partial(self.pre_save, opaque)
            _run_hook(SaveHookError, self.name, "pre_save", pre_save)
        try:
            state = self._save_values(opaque, version)
        except SaveHookError:
            if self.post_save is not None:
                with contextlib.suppress(HookError):  # the first failure is the one reported
                    self.post_save(opaque)
            raise
        if self.post_save is not None:
            post_save = functools.partial(self.post_save, opaque)
            _run_hook(SaveHookError, self.name, "post_save", post_save)
        return state

    def _save_values(self, opaque: T, version: int) -> dict[str, object]:
        fields = {f.name: f.save(opaque) for f in self.fields if f.exists(opaque, version)}
        subsections = {
            sub.name: {"version_id": sub.version_id, **sub.save(opaque)}
            for sub in self.subsections
            if sub.needed is not None and sub.needed(opaque)
        }
        return {"fields": fields, "subsections": subsections}

    # ------------------------------------------------------------------ load

    def load(self, opaque: T, state: Mapping[str, object], version_id: int) -> None:
        """Load a saved state of version_id into the device, validating it all first.

        Raises:
            VersionTooNewError: version_id is above this VMSD's version_id.
            VersionTooOldError: version_id is below minimum_version_id.
            UnknownSubsectionError: a subsection is not declared here.
            FieldError: a field is missing, extra, of the wrong type or out of range.
            InvalidStateError: a post_load check failed.
            LoadHookError: a pre_load or post_load hook raised HookError; the load stops there.
        """
        self.check_version(version_id)
        self.validate(opaque, state, version_id)
        self.apply(opaque, state, version_id)

    def check_version(self, version_id: int) -> None:
        """Raise unless version_id is in minimum_version_id .. version_id (vmstate_load_state)."""
        if version_id > self.version_id:
            raise VersionTooNewError(
                f"incoming version_id {version_id} is too new for local version_id"
                f" {self.version_id}",
                device=self.name,
            )
        if version_id < self.minimum_version_id:
            raise VersionTooOldError(
                f"incoming version_id {version_id} is too old for local minimum version_id"
                f" {self.minimum_version_id}",
                device=self.name,
            )

    def validate(self, opaque: T, state: Mapping[str, object], version_id: int) -> None:
        """Check a whole incoming state (recursively) without changing the device."""
        fields, subsections = self._split(state, _STATE_KEYS)
        self._validate_fields(opaque, fields, version_id)
        for name, sub_state in subsections.items():
            sub = self._subsection(name)
            sub_version, sub_fields = sub._split_subsection(sub_state)  # noqa: SLF001
            sub.check_version(sub_version)
            sub.validate(opaque, sub_fields, sub_version)

    def apply(self, opaque: T, state: Mapping[str, object], version_id: int) -> None:
        """Assign a validated state: pre_load, fields, subsections, post_load.

        Raises:
            LoadHookError: a pre_load or post_load hook raised HookError.
            InvalidStateError: a post_load check failed.
        """
        fields, subsections = self._split(state, _STATE_KEYS)
        if self.pre_load is not None:
            pre_load = functools.partial(self.pre_load, opaque)
            _run_hook(LoadHookError, self.name, "pre_load", pre_load)
        for field in self.fields:
            if not field.exists(opaque, version_id):
                continue  # not in this stream version: keeps its current value
            value = fields[field.name]
            if field.kind is FieldKind.STRUCT and field.vmsd is not None:
                assert isinstance(value, Mapping)  # noqa: S101 - validated
                field.vmsd.apply(getattr(opaque, field.name), value, field.vmsd.version_id)
            else:
                field.assign(opaque, value)
        for name, sub_state in subsections.items():
            sub = self._subsection(name)
            sub_version, sub_fields = sub._split_subsection(sub_state)  # noqa: SLF001
            sub.apply(opaque, sub_fields, sub_version)
        if self.post_load is not None:
            post_load = functools.partial(self.post_load, opaque, version_id)
            _run_hook(LoadHookError, self.name, "post_load", post_load)

    # ------------------------------------------------------------------ vmdesc

    def describe(self) -> dict[str, object]:
        """Return the VMSD's vmdesc description (QEMU's vmstate JSON, static form)."""
        return {
            "vmsd_name": self.name,
            "version": self.version_id,
            "fields": [field.describe() for field in self.fields],
            "subsections": [sub.describe() for sub in self.subsections],
        }

    @property
    def size_bytes(self) -> int:
        """The total size of the fields (vmdesc's size of a struct)."""
        return sum(field.total_size_bytes for field in self.fields)

    # ------------------------------------------------------------------ helpers

    def _validate_fields(self, opaque: T, fields: Mapping[str, object], version_id: int) -> None:
        expected = [f for f in self.fields if f.exists(opaque, version_id)]
        expected_names = {f.name for f in expected}
        for name in fields:
            if name not in expected_names:
                raise FieldError(
                    f"field '{name}': not part of '{self.name}' at version_id {version_id}",
                    device=self.name,
                    field=str(name),
                )
        for field in expected:
            if field.name not in fields:
                raise FieldError(
                    f"field '{field.name}': missing (expected at version_id {version_id})",
                    device=self.name,
                    field=field.name,
                )
            value = fields[field.name]
            problem = field.check(value, fields)
            if problem is not None:
                raise FieldError(
                    f"field '{field.name}': {problem}", device=self.name, field=field.name
                )
            if field.vmsd is not None:
                assert isinstance(value, Mapping)  # noqa: S101 - checked above
                nested = getattr(opaque, field.name)
                field.vmsd.validate(nested, value, field.vmsd.version_id)

    def _split(
        self, state: object, keys: frozenset[str]
    ) -> tuple[Mapping[str, object], Mapping[str, object]]:
        if not isinstance(state, Mapping) or set(state) - keys or "fields" not in state:
            raise FieldError(
                f"malformed state: expected a dict with keys {sorted(keys)}", device=self.name
            )
        fields = state["fields"]
        subsections = state.get("subsections", {})
        if not isinstance(fields, Mapping) or not isinstance(subsections, Mapping):
            raise FieldError(
                "malformed state: fields and subsections must be dicts", device=self.name
            )
        return fields, subsections

    def _split_subsection(self, state: object) -> tuple[int, Mapping[str, object]]:
        self._split(state, _SUBSECTION_KEYS)
        assert isinstance(state, Mapping)  # noqa: S101 - checked by _split
        version = state.get("version_id")
        if isinstance(version, bool) or not isinstance(version, int):
            raise FieldError(f"malformed subsection: version_id {version!r}", device=self.name)
        return version, {key: value for key, value in state.items() if key != "version_id"}

    def _subsection(self, name: object) -> VMStateDescription[T]:
        for sub in self.subsections:
            if sub.name == name:
                return sub
        if not isinstance(name, str) or not name.startswith(self.name):
            detail = f"subsection {name!r} does not start with the name of '{self.name}'"
        else:
            detail = f"VM subsection '{name}' in '{self.name}' does not exist"
        raise UnknownSubsectionError(detail, device=self.name)


def _run_hook(
    error: type[SaveHookError | LoadHookError],
    vmsd_name: str,
    hook: str,
    call: Callable[[], None],
) -> None:
    """Call a hook; a HookError it raises becomes `error`, naming the VMSD and the hook."""
    try:
        call()
    except HookError as failure:
        raise error(str(failure), device=vmsd_name, hook=hook) from failure


def _check_definition(vmsd: VMStateDescription[Any]) -> None:
    """Reject malformed descriptions when they are defined, not when a load fails."""
    problems: list[str] = []
    if not 0 <= vmsd.minimum_version_id <= vmsd.version_id:
        problems.append("minimum_version_id must be in 0..version_id")
    problems.extend(_field_problems(vmsd))
    for sub in vmsd.subsections:
        if not sub.name.startswith(vmsd.name):
            problems.append(f"subsection '{sub.name}' must start with '{vmsd.name}'")
        if sub.needed is None:
            problems.append(f"subsection '{sub.name}' has no needed()")
    if problems:
        raise VMStateDefinitionError(f"VMSD '{vmsd.name}': {'; '.join(problems)}")


def _field_problems(vmsd: VMStateDescription[Any]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for field in vmsd.fields:
        if field.name in seen:
            problems.append(f"duplicate field '{field.name}'")
        if field.version_id > vmsd.version_id:
            problems.append(f"field '{field.name}' is newer than the VMSD")
        if field.kind is FieldKind.VBUFFER and field.length_field not in seen:
            problems.append(f"length field of '{field.name}' must be declared before it")
        if field.kind is FieldKind.STRUCT and field.vmsd is None:
            problems.append(f"struct field '{field.name}' has no vmsd")
        seen.add(field.name)
    return problems
