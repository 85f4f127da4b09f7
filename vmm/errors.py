"""The vmm exception tree: failures a QMP user sees, as `error-desc` or a command error."""

from __future__ import annotations


class VmmError(Exception):
    """Root of vmm errors. Not raised directly."""

    def __init__(self, message: str) -> None:
        if type(self) is VmmError:
            msg = "VmmError is abstract; raise a subclass"
            raise TypeError(msg)
        super().__init__(message)

    @property
    def message(self) -> str:
        """The text shown to the user."""
        return str(self.args[0])


class ParameterError(VmmError):
    """A migration parameter or capability value is out of range or unknown."""


class CommandRefusedError(VmmError):
    """A command is not allowed in the current state (e.g. `migrate` while one is running)."""


class MigrationError(VmmError):
    """A migration failed; the message becomes `error-desc`."""


class StatusTransitionError(VmmError):
    """A migration status change that the status table does not allow (a bug)."""
