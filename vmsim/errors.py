"""The exception tree of vmsim: one abstract root, one class per kind of failure.

Every error a caller can act on derives from `VMSimError`. Errors about device state
(`VMStateError` and its subclasses) carry the device (VMSD name) and, where there is one, the
field, so a failed load always says what was wrong and where.
"""

from __future__ import annotations

from typing import Self

__all__ = [
    "ChangeStateError",
    "ConfigError",
    "DuplicateEntryError",
    "FieldError",
    "HookError",
    "InvalidStateError",
    "InvalidTransition",
    "LoadHookError",
    "MigrationBlockedError",
    "MissingSectionError",
    "NotAllowed",
    "RamError",
    "SaveHookError",
    "SaveVMError",
    "UnknownSectionError",
    "UnknownSubsectionError",
    "UnsupportedVersionError",
    "VMSimError",
    "VMStateDefinitionError",
    "VMStateError",
    "VersionTooNewError",
    "VersionTooOldError",
]


class VMSimError(Exception):
    """Root of every vmsim error; abstract, so raise one of its subclasses."""

    def __new__(cls, *args: object, **kwargs: object) -> Self:
        """Refuse to create the abstract root itself."""
        # h11's rule: the root only groups; raising it directly hides what went wrong.
        if cls is VMSimError:
            msg = "VMSimError is abstract; raise one of its subclasses"
            raise TypeError(msg)
        return super().__new__(cls, *args, **kwargs)


class ConfigError(VMSimError):
    """A machine configuration value is missing, unknown, of the wrong type or out of range."""


class NotAllowed(VMSimError):  # noqa: N818 - Firecracker's name for "not in this state"
    """The operation is not allowed in the machine's current run state."""


class InvalidTransition(VMSimError):  # noqa: N818 - QEMU's "invalid runstate transition"
    """A run-state change that QEMU's transition table does not allow.

    Attributes:
        from_state: the current run state (its QEMU name).
        to_state: the requested run state (its QEMU name).
    """

    def __init__(self, from_state: str, to_state: str) -> None:
        super().__init__(f"invalid runstate transition: '{from_state}' -> '{to_state}'")
        self.from_state = from_state
        self.to_state = to_state


class HookError(VMSimError):
    """Raised by a device's hook to report that it failed; the message says why.

    QEMU's hooks report failure through their result (pre_save, pre_load and post_load return
    a non-zero int, change-state handlers registered with a result return one). In Python a hook
    raises instead: a failure cannot be dropped by a caller that forgets to look at a result,
    the hooks keep their `-> None` signatures, and the reason travels with the failure. A hook
    raises HookError and never needs to know where it runs: the framework catches HookError
    (only HookError: any other exception is a bug and propagates unchanged) and raises an error
    that names the device and the hook: SaveHookError (pre_save, post_save), LoadHookError
    (pre_load, post_load) or ChangeStateError (change-state handlers on a stop).
    """


class ChangeStateError(VMSimError):
    """Change-state handlers raised HookError while the VM stopped (QEMU's do_vm_stop error).

    As in QEMU, every handler still ran and the VM is stopped in `to_state`: the caller fails
    what it was doing (a migration) and may start the VM again from there.

    Attributes:
        from_state: the run state before the stop (its QEMU name): the one to return to.
        to_state: the run state the VM is in now (its QEMU name).
        failures: (handler name, the HookError it raised) per failed handler, in call order.
    """

    def __init__(
        self, from_state: str, to_state: str, failures: tuple[tuple[str, HookError], ...]
    ) -> None:
        details = "; ".join(
            f"change-state handler '{name}' failed: {error}" for name, error in failures
        )
        super().__init__(f"stopping the VM ('{from_state}' -> '{to_state}'): {details}")
        self.from_state = from_state
        self.to_state = to_state
        self.failures = failures


class RamError(VMSimError):
    """A RAM setup record or page batch does not fit this machine's guest RAM."""


class SaveVMError(VMSimError):
    """A save or load through the savevm registry failed, or the registry was misused."""


class DuplicateEntryError(SaveVMError):
    """A (idstr, instance_id) pair was registered twice."""


class UnknownSectionError(SaveVMError):
    """A section names an entry (or a section id) this machine does not have."""


class UnsupportedVersionError(SaveVMError):
    """A section header carries a version newer than the local entry's."""


class MigrationBlockedError(SaveVMError):
    """An unmigratable device blocks saving or loading."""


class SaveHookError(SaveVMError):
    """A device's pre_save or post_save hook raised HookError, so saving its state failed.

    Attributes:
        device: the name of the VMSD (or subsection) whose hook failed.
        hook: "pre_save" or "post_save".
        reason: what the hook said.
        detail: the message without the device prefix: "<hook> hook failed: <reason>".
    """

    def __init__(self, reason: str, *, device: str, hook: str) -> None:
        self.detail = f"{hook} hook failed: {reason}"
        super().__init__(f"{device}: {self.detail}")
        self.device = device
        self.hook = hook
        self.reason = reason

    def reworded(self, message: str) -> SaveHookError:
        """Return an error of the same origin with a new full message (the framework's prefix)."""
        error = SaveHookError(self.reason, device=self.device, hook=self.hook)
        error.args = (message,)
        return error


class MissingSectionError(SaveVMError):
    """A load ended without the state of devices that cannot be left at their reset state.

    Attributes:
        missing: (idstr, instance_id) of every such device, in registry order.
    """

    def __init__(self, missing: tuple[tuple[str, int], ...]) -> None:
        names = ", ".join(f"'{idstr}' instance {instance_id}" for idstr, instance_id in missing)
        super().__init__(f"missing device state for {names}")
        self.missing = missing


class VMStateDefinitionError(VMSimError):
    """A VMStateDescription is malformed (a programming error, found at definition time)."""


class VMStateError(VMSimError):
    """Loading device state failed; names the device and, where there is one, the field.

    Attributes:
        device: the name of the VMSD (or subsection) being loaded.
        field: the field at fault, or None when the error concerns the whole device.
        detail: the message without the device prefix.
    """

    def __init__(self, detail: str, *, device: str, field: str | None = None) -> None:
        super().__init__(f"{device}: {detail}")
        self.detail = detail
        self.device = device
        self.field = field

    def reworded(self, message: str) -> VMStateError:
        """Return an error of the same class and origin with a new full message.

        The savevm framework uses it to add QEMU's "error while loading state for instance ..."
        prefix without losing the class, device or field.
        """
        error = type(self)(self.detail, device=self.device, field=self.field)
        error.args = (message,)
        return error


class VersionTooNewError(VMStateError):
    """The incoming version_id is newer than the local VMSD's version_id."""


class VersionTooOldError(VMStateError):
    """The incoming version_id is older than the local VMSD's minimum_version_id."""


class UnknownSubsectionError(VMStateError):
    """The incoming state carries a subsection the local VMSD does not declare."""


class FieldError(VMStateError):
    """A field is missing, unexpected, of the wrong type or out of range."""


class InvalidStateError(VMStateError):
    """The state is well-formed but inconsistent (a post_load check failed)."""


class LoadHookError(VMStateError):
    """A device's pre_load or post_load hook raised HookError, so loading its state failed.

    Attributes:
        hook: "pre_load" or "post_load".
        reason: what the hook said (`detail` is "<hook> hook failed: <reason>").
    """

    def __init__(self, reason: str, *, device: str, hook: str) -> None:
        super().__init__(f"{hook} hook failed: {reason}", device=device)
        self.hook = hook
        self.reason = reason

    def reworded(self, message: str) -> LoadHookError:
        """Return an error of the same origin with a new full message (the framework's prefix)."""
        error = LoadHookError(self.reason, device=self.device, hook=self.hook)
        error.args = (message,)
        return error
