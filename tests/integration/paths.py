"""The paths through the status tables that the integration tests expect, row by row.

Each test asserts that a migration took exactly one of these paths (`Daemon.source_path()`,
`Daemon.dest_path()`), and `test_table_coverage.py` checks that together they take every row
of both tables that is not reserved for later work, and that each path is used by a test.
"""

from __future__ import annotations

from migration.status import MigrationStatus as S
from migration.table import DestTrigger as D
from migration.table import Row
from migration.table import SourceTrigger as T

# --------------------------------------------------------------------------- source

_SETUP = [Row(S.NONE, T.MIGRATE, S.SETUP)]
_ACTIVE = [*_SETUP, Row(S.SETUP, T.SETUP_DONE, S.ACTIVE)]
_DEVICE = [*_ACTIVE, Row(S.ACTIVE, T.CONVERGED, S.DEVICE)]
_PAUSED = [*_ACTIVE, Row(S.ACTIVE, T.CONVERGED_PAUSED, S.PRE_SWITCHOVER)]
_CONTINUED = [*_PAUSED, Row(S.PRE_SWITCHOVER, T.CONTINUED, S.DEVICE)]
_IN_DOUBT = [*_DEVICE, Row(S.DEVICE, T.LOST_AFTER_HANDOVER, S.IN_DOUBT)]

SRC_COMPLETED = [*_DEVICE, Row(S.DEVICE, T.RESUMED, S.COMPLETED)]
_THROTTLED = [*_ACTIVE, Row(S.ACTIVE, T.THROTTLE, S.ACTIVE)]
SRC_THROTTLED_COMPLETED = [
    *_THROTTLED,
    Row(S.ACTIVE, T.CONVERGED, S.DEVICE),
    Row(S.DEVICE, T.RESUMED, S.COMPLETED),
]
SRC_THROTTLED_COMPLETED_AFTER_CONTINUE = [
    *_THROTTLED,
    Row(S.ACTIVE, T.CONVERGED_PAUSED, S.PRE_SWITCHOVER),
    Row(S.PRE_SWITCHOVER, T.CONTINUED, S.DEVICE),
    Row(S.DEVICE, T.RESUMED, S.COMPLETED),
]
SRC_TIMED_OUT = [*_ACTIVE, Row(S.ACTIVE, T.TIMED_OUT, S.FAILED)]
SRC_COMPLETED_AFTER_CONTINUE = [*_CONTINUED, Row(S.DEVICE, T.RESUMED, S.COMPLETED)]
SRC_FILE_COMPLETED = [*_DEVICE, Row(S.DEVICE, T.STREAM_SENT, S.COMPLETED)]

# precopy resume (x-precopy-resume-ms): the status stays active through a break
_BROKEN = Row(S.ACTIVE, T.PRECOPY_BROKEN, S.ACTIVE)
_RESUMED = Row(S.ACTIVE, T.PRECOPY_RESUMED, S.ACTIVE)
SRC_RESUMED_COMPLETED = [*_ACTIVE, _BROKEN, _RESUMED, *SRC_COMPLETED[len(_ACTIVE) :]]
SRC_RESUMED_TWICE_COMPLETED = [*_ACTIVE, _BROKEN, _RESUMED, *SRC_RESUMED_COMPLETED[2:]]
SRC_BROKEN_FAILED = [*_ACTIVE, _BROKEN, Row(S.ACTIVE, T.FAILED, S.FAILED)]

SRC_FAILED_IN_SETUP = [*_SETUP, Row(S.SETUP, T.FAILED, S.FAILED)]
SRC_FAILED_ACTIVE = [*_ACTIVE, Row(S.ACTIVE, T.FAILED, S.FAILED)]
SRC_FAILED_PAUSED = [*_PAUSED, Row(S.PRE_SWITCHOVER, T.FAILED, S.FAILED)]
SRC_FAILED_DEVICE = [*_DEVICE, Row(S.DEVICE, T.FAILED, S.FAILED)]


_BREAK_TRIGGERS = frozenset({T.PRECOPY_BROKEN, D.PRECOPY_BROKEN})


def breaks_taken(path: list[Row], expected: list[Row]) -> int:
    """How often `path` broke and resumed in precopy, once it is `expected` with each of its
    break-and-resume pairs taken one or more times (a loaded machine's short peer timeout may
    add a break to the one a test made)."""
    at = next(i for i, row in enumerate(expected) if row.trigger in _BREAK_TRIGGERS)
    head, pair, tail = expected[:at], expected[at : at + 2], expected[at + 2 :]
    assert path[: len(head)] == head
    assert path[len(path) - len(tail) :] == tail
    middle = path[len(head) : len(path) - len(tail)]
    assert middle, path
    assert middle == pair * (len(middle) // 2), middle
    return len(middle) // 2


def collapsed(path: list[Row]) -> list[Row]:
    """`path` with repeated rows in a row taken once (the throttle steps up several times)."""
    return [row for i, row in enumerate(path) if i == 0 or row != path[i - 1]]


def cancelled(path: list[Row]) -> list[Row]:
    """`path`, then migrate_cancel in its last status: cancelling, cancelled."""
    status = path[-1].after
    return [*path, Row(status, T.CANCEL, S.CANCELLING), Row(S.CANCELLING, T.CANCELLED, S.CANCELLED)]


SRC_CANCELLED_IN_SETUP = cancelled(_SETUP)
SRC_CANCELLED_ACTIVE = cancelled(_ACTIVE)
SRC_CANCELLED_PAUSED = cancelled(_PAUSED)
SRC_CANCELLED_DEVICE = cancelled(_DEVICE)
SRC_CANCELLED_THROTTLED = cancelled(_THROTTLED)

SRC_IN_DOUBT_COMMITTED = [*_IN_DOUBT, Row(S.IN_DOUBT, T.OUTCOME_COMMITTED, S.COMPLETED)]
SRC_IN_DOUBT_DISCARDED = [*_IN_DOUBT, Row(S.IN_DOUBT, T.OUTCOME_DISCARDED, S.FAILED)]
SRC_IN_DOUBT_OPERATOR_COMPLETE = [*_IN_DOUBT, Row(S.IN_DOUBT, T.OPERATOR_COMPLETE, S.COMPLETED)]
SRC_IN_DOUBT_OPERATOR_RESUME = [*_IN_DOUBT, Row(S.IN_DOUBT, T.OPERATOR_RESUME, S.FAILED)]


def shut_down(path: list[Row]) -> list[Row]:
    """`path`, then the daemon shut down in its last status."""
    return [*path, Row(path[-1].after, T.SHUTDOWN, S.FAILED)]


SRC_SHUTDOWN_IN_SETUP = shut_down(_SETUP)
SRC_SHUTDOWN_ACTIVE = shut_down(_ACTIVE)
SRC_SHUTDOWN_PAUSED = shut_down(_PAUSED)
SRC_SHUTDOWN_DEVICE = shut_down(_DEVICE)
SRC_SHUTDOWN_IN_DOUBT = shut_down(_IN_DOUBT)

_POSTCOPY = [*_ACTIVE, Row(S.ACTIVE, T.START_POSTCOPY, S.POSTCOPY_ACTIVE)]
_POSTCOPY_PAUSED = [*_POSTCOPY, Row(S.POSTCOPY_ACTIVE, T.CHANNEL_LOST, S.POSTCOPY_PAUSED)]
SRC_POSTCOPY_COMPLETED = [*_POSTCOPY, Row(S.POSTCOPY_ACTIVE, T.RESUMED, S.COMPLETED)]
SRC_POSTCOPY_REFUSED = [*_POSTCOPY, Row(S.POSTCOPY_ACTIVE, T.FAILED, S.FAILED)]
SRC_POSTCOPY_PAUSED = _POSTCOPY_PAUSED
SRC_POSTCOPY_IN_DOUBT_COMMITTED = [
    *_POSTCOPY,
    Row(S.POSTCOPY_ACTIVE, T.LOST_AFTER_HANDOVER, S.IN_DOUBT),
    Row(S.IN_DOUBT, T.OUTCOME_COMMITTED, S.COMPLETED),
]
_RESUMING = [
    Row(S.POSTCOPY_PAUSED, T.RESUME, S.POSTCOPY_RECOVER_SETUP),
    Row(S.POSTCOPY_RECOVER_SETUP, T.RECOVERY_CONNECTED, S.POSTCOPY_RECOVER),
]
_RECOVERED = [
    *_RESUMING,
    Row(S.POSTCOPY_RECOVER, T.RECOVERED, S.POSTCOPY_ACTIVE),
    Row(S.POSTCOPY_ACTIVE, T.RESUMED, S.COMPLETED),
]
SRC_POSTCOPY_RECOVERED = [*_POSTCOPY_PAUSED, *_RECOVERED]
SRC_POSTCOPY_TAKEN_BACK = [
    *_POSTCOPY_PAUSED,
    *_RESUMING,
    Row(S.POSTCOPY_RECOVER, T.DEST_DISCARDED, S.FAILED),
]
SRC_POSTCOPY_RECOVERED_AFTER_TWO_FAILURES = [
    *_POSTCOPY_PAUSED,
    Row(S.POSTCOPY_PAUSED, T.RESUME, S.POSTCOPY_RECOVER_SETUP),
    Row(S.POSTCOPY_RECOVER_SETUP, T.RECOVER_FAILED, S.POSTCOPY_PAUSED),
    *_RESUMING,
    Row(S.POSTCOPY_RECOVER, T.CHANNEL_LOST, S.POSTCOPY_PAUSED),
    *_RECOVERED,
]
SRC_SHUTDOWN_POSTCOPY = shut_down(_POSTCOPY)
SRC_SHUTDOWN_POSTCOPY_PAUSED = shut_down(_POSTCOPY_PAUSED)

# --------------------------------------------------------------------------- destination

_D_SETUP = [Row(S.NONE, D.STREAM_ACCEPTED, S.SETUP)]
_D_ACTIVE = [*_D_SETUP, Row(S.SETUP, D.RAM_READY, S.ACTIVE)]
_D_LOADED = [*_D_ACTIVE, Row(S.ACTIVE, D.STREAM_LOADED, S.ACTIVE)]
_D_HELD = [*_D_LOADED, Row(S.ACTIVE, D.SOURCE_LOST, S.IN_DOUBT)]

DST_COMMITTED = [*_D_LOADED, Row(S.ACTIVE, D.HANDOVER, S.COMPLETED)]
DST_FILE_COMMITTED = [*_D_LOADED, Row(S.ACTIVE, D.FILE_LOADED, S.COMPLETED)]
DST_DISCARDED_IN_SETUP = [*_D_SETUP, Row(S.SETUP, D.DISCARDED, S.FAILED)]
DST_DISCARDED_ACTIVE = [*_D_ACTIVE, Row(S.ACTIVE, D.DISCARDED, S.FAILED)]
DST_DISCARDED_LOADED = [*_D_LOADED, Row(S.ACTIVE, D.DISCARDED, S.FAILED)]
_D_BROKEN = Row(S.ACTIVE, D.PRECOPY_BROKEN, S.ACTIVE)
_D_RESUMED = Row(S.ACTIVE, D.PRECOPY_RESUMED, S.ACTIVE)
DST_RESUMED_COMMITTED = [*_D_ACTIVE, _D_BROKEN, _D_RESUMED, *DST_COMMITTED[len(_D_ACTIVE) :]]
DST_BROKEN_DISCARDED = [*_D_ACTIVE, _D_BROKEN, Row(S.ACTIVE, D.DISCARDED, S.FAILED)]
DST_RESUMED_BROKEN_DISCARDED = [*_D_ACTIVE, _D_BROKEN, _D_RESUMED, *DST_BROKEN_DISCARDED[-2:]]
DST_HELD = _D_HELD
DST_HELD_COMMITTED = [*_D_HELD, Row(S.IN_DOUBT, D.HANDOVER, S.COMPLETED)]
DST_HELD_OPERATOR_COMMIT = [*_D_HELD, Row(S.IN_DOUBT, D.OPERATOR_COMMIT, S.COMPLETED)]
DST_HELD_DISCARDED = [*_D_HELD, Row(S.IN_DOUBT, D.DISCARDED, S.FAILED)]

_D_POSTCOPY = [*_D_ACTIVE, Row(S.ACTIVE, D.POSTCOPY_RUN, S.POSTCOPY_ACTIVE)]
DST_POSTCOPY_COMMITTED = [*_D_POSTCOPY, Row(S.POSTCOPY_ACTIVE, D.HANDOVER, S.COMPLETED)]
DST_POSTCOPY_SOURCE_LOST = [*_D_POSTCOPY, Row(S.POSTCOPY_ACTIVE, D.SOURCE_LOST, S.COMPLETED)]
DST_POSTCOPY_PAUSED = [*_D_POSTCOPY, Row(S.POSTCOPY_ACTIVE, D.CHANNEL_LOST, S.POSTCOPY_PAUSED)]
_D_RECOVERING = [
    Row(S.POSTCOPY_PAUSED, D.RECOVER, S.POSTCOPY_RECOVER_SETUP),
    Row(S.POSTCOPY_RECOVER_SETUP, D.RECOVERY_CONNECTED, S.POSTCOPY_RECOVER),
]
_D_RECOVERED = [
    *_D_RECOVERING,
    Row(S.POSTCOPY_RECOVER, D.RECOVERED, S.POSTCOPY_ACTIVE),
    Row(S.POSTCOPY_ACTIVE, D.HANDOVER, S.COMPLETED),
]
DST_POSTCOPY_RECOVERED = [*DST_POSTCOPY_PAUSED, *_D_RECOVERED]
DST_POSTCOPY_RECOVERED_AFTER_A_CUT = [
    *DST_POSTCOPY_PAUSED,
    *_D_RECOVERING,
    Row(S.POSTCOPY_RECOVER, D.CHANNEL_LOST, S.POSTCOPY_PAUSED),
    *_D_RECOVERED,
]


def all_paths() -> dict[str, list[Row]]:
    """Every path above by name."""
    return {
        name: value
        for name, value in globals().items()
        if name.startswith(("SRC_", "DST_")) and isinstance(value, list)
    }
