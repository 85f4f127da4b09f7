"""The migration engine: one sans-IO state machine per side, its policies and its metrics.

``SourceMigration`` and ``DestMigration`` (with the ``IncomingLedger`` and the
``ResolveResponder``) take inputs (`migration.inputs`) with ``now`` and return actions
(`migration.actions`); they never await, read a clock or log. Their statuses change only along
the tables in `migration.table`. The asyncio runners in ``vmm`` execute the actions and feed the
inputs (docs/architecture.md).
"""

from __future__ import annotations

from migration.dest import DestMigration
from migration.errors import (
    CommandRefusedError,
    EngineError,
    LoadError,
    ParameterError,
    TransitionError,
)
from migration.info import dest_info, source_info
from migration.inputs import ChannelJoined, ChannelKey, ShutdownRequested, TakenOver
from migration.ledger import IncomingLedger, IncomingRecord, Install
from migration.metrics import DestMetrics, DowntimeMarks, SourceMetrics
from migration.params import (
    MigrationCapabilities,
    MigrationParameters,
    capability_names,
    parameter_names,
)
from migration.responder import ResolveResponder
from migration.source import SourceMigration
from migration.status import MigrationStatus, is_active, is_terminal
from migration.table import DestTrigger, Side, SourceTrigger, StatusMachine

__all__ = [
    "ChannelJoined",
    "ChannelKey",
    "CommandRefusedError",
    "DestMetrics",
    "DestMigration",
    "DestTrigger",
    "DowntimeMarks",
    "EngineError",
    "IncomingLedger",
    "IncomingRecord",
    "Install",
    "LoadError",
    "MigrationCapabilities",
    "MigrationParameters",
    "MigrationStatus",
    "ParameterError",
    "ResolveResponder",
    "ShutdownRequested",
    "Side",
    "SourceMetrics",
    "SourceMigration",
    "SourceTrigger",
    "StatusMachine",
    "TakenOver",
    "TransitionError",
    "capability_names",
    "dest_info",
    "is_active",
    "is_terminal",
    "parameter_names",
    "source_info",
]
