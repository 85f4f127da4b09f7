"""When a broken connection is tried again: a delay that doubles from `first_s` up to `max_s`.

Shared by postcopy's `x-auto-recover` (`migration.source_postcopy.AutoRecover`) and precopy
resume (`migration.precopy_resume.ReconnectBudget`).
"""

from __future__ import annotations


class Backoff:
    """Attempts with a doubling delay.

    Attributes:
        attempts: attempts started so far.
        due_at: when the next attempt is due (None: none is scheduled).
    """

    def __init__(self, first_s: float, max_s: float) -> None:
        self._first_s = first_s
        self._max_s = max_s
        self._delay_s = first_s
        self.attempts = 0
        self.due_at: float | None = None

    def schedule(self, now: float, not_after: float | None = None) -> None:
        """A failure now: the next attempt after the current delay (never past `not_after`)."""
        due_at = now + self._delay_s
        self.due_at = due_at if not_after is None else min(due_at, not_after)
        self._delay_s = min(self._delay_s * 2, self._max_s)

    def attempt(self) -> None:
        """An attempt starts now."""
        self.attempts += 1
        self.due_at = None

    def reset(self) -> None:
        """It worked: a later failure starts from the first delay."""
        self.due_at = None
        self._delay_s = self._first_s
