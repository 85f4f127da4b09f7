"""When a postcopy recovery gives the VM back to the source: only when the destination never ran it.

The end-to-end cases are in tests/integration/test_postcopy.py: a recover refused with DISCARDED
(cut after POSTCOPY_LISTEN) and answered with RESUME_POINT (cut before the first
POSTCOPY_RAM_DISCARD: the destination saw none of the switch and kept a paused precopy). Here,
the routing of each answer on its own, against every status and error code.
"""

from __future__ import annotations

from types import SimpleNamespace

from migration.source_recovery import never_ran_there
from migration.source_resume import NEVER_SWITCHED, PrecopyResumeControl
from migration.status import MigrationStatus
from protocol import ErrorCode, ResumePointReported


def test_only_discarded_in_postcopy_recover_gives_the_vm_back() -> None:
    assert never_ran_there(ErrorCode.DISCARDED, MigrationStatus.POSTCOPY_RECOVER)
    others = [s for s in MigrationStatus if s is not MigrationStatus.POSTCOPY_RECOVER]
    assert not any(never_ran_there(ErrorCode.DISCARDED, status) for status in others)
    codes = [c for c in ErrorCode if c is not ErrorCode.DISCARDED]
    assert not any(never_ran_there(code, MigrationStatus.POSTCOPY_RECOVER) for code in codes)


class _Recovering(PrecopyResumeControl):
    """The mixin's inputs, as `SourceMigration` holds them in one status; `_fail` records."""

    def __init__(self, status: MigrationStatus) -> None:
        self.status = SimpleNamespace(status=status)  # type: ignore[assignment]
        self.failures: list[tuple[str, ErrorCode]] = []

    def _fail(self, reason: str, code: ErrorCode, trigger: object = None) -> None:
        self.failures.append((reason, code))


def test_resume_point_answering_a_postcopy_recovery_gives_the_vm_back() -> None:
    machine = _Recovering(MigrationStatus.POSTCOPY_RECOVER)
    machine._on_recovery_reply(ResumePointReported(ram_frames=3))
    assert [(NEVER_SWITCHED, ErrorCode.DISCARDED)] == machine.failures
    _, code = machine.failures[0]
    assert never_ran_there(code, MigrationStatus.POSTCOPY_RECOVER), "then _fail resumes it"
