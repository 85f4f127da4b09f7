"""The actions one ``handle()`` call collects, and the time it runs at.

Every part of a machine (the stream sender, the resolver, the machine itself) appends to the
same outbox, so the runner gets one ordered list per input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration import actions as act

if TYPE_CHECKING:
    from collections.abc import Mapping

    from migration.inputs import ChannelKey


class Outbox:
    """Actions in the order they must run, and `now`, the time of the input being handled."""

    def __init__(self, now: float) -> None:
        self.now = now
        self._actions: list[act.Action] = []

    def do(self, action: act.Action) -> None:
        """Append an action."""
        self._actions.append(action)

    def flush(self, channel: ChannelKey, *, keep_bytes: int = 0) -> None:
        """Send what `channel` has queued; `SendDone` once at most `keep_bytes` remain."""
        self.do(act.Flush(channel=channel, keep_bytes=keep_bytes))

    def status_changed(
        self,
        status: str,
        *,
        migration_id: str,
        events: bool,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """A migration reached `status`: counted always, a MIGRATION event if `events`."""
        self.do(act.StatusChanged(status=str(status), migration_id=migration_id))
        if events:
            self.do(act.EmitEvent(name="MIGRATION", data={"status": str(status), **(extra or {})}))

    def log(self, event: str, *, level: act.Level = act.Level.INFO, **fields: object) -> None:
        """A structured log line."""
        self.do(act.LogFact(event=event, level=level, fields=fields))

    def log_figures(self, event: str, figures: Mapping[str, object]) -> None:
        """A structured log line of figures (a canonical summary line)."""
        self.do(act.LogFact(event=event, fields=dict(figures)))

    def begin(self, now: float) -> None:
        """A new input arrives at `now`."""
        self.now = now

    def take(self) -> list[act.Action]:
        """The actions collected so far (and empty the outbox)."""
        actions, self._actions = self._actions, []
        return actions
