"""The migration engine's exception tree: what a QMP user sees as an error, and bugs.

A migration that fails is not an exception here: the state machines record it as a status and an
`error-desc`. Exceptions are for callers: a refused command, a bad parameter, or a transition the
tables do not allow (a bug, never silently ignored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol import ErrorCode


class EngineError(Exception):
    """Root of the migration engine's errors. Not raised directly."""

    def __init__(self, message: str) -> None:
        if type(self) is EngineError:
            msg = "EngineError is abstract; raise a subclass"
            raise TypeError(msg)
        super().__init__(message)

    @property
    def message(self) -> str:
        """The text shown to the user."""
        return str(self.args[0])


class ParameterError(EngineError):
    """A migration parameter or capability value is out of range or unknown."""


class CommandRefusedError(EngineError):
    """A command is not allowed in the current state (e.g. `migrate` while one is running)."""


class TransitionError(EngineError):
    """A status change or phase change the tables do not allow (a bug)."""


class LoadError(EngineError):
    """An incoming stream cannot be loaded; `code` goes back to the source in FAILED."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code
