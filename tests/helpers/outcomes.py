"""Outcomes of fault cases, collected while tests run and tallied at the end of the run.

The fault matrix and the cut campaign record each case here; the root ``conftest.py`` prints
the tally (``pytest_terminal_summary`` only runs from the root conftest or a plugin).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class OutcomeLog:
    """Per-suite lists of cases: fault, phase or offset, outcome and where the VM runs."""

    cases: dict[str, list[dict[str, object]]] = field(default_factory=dict)

    def record(self, suite: str, **case: object) -> None:
        self.cases.setdefault(suite, []).append(case)

    def summary_lines(self) -> list[str]:
        lines = []
        for suite, cases in self.cases.items():
            tally = Counter(str(case["outcome"]) for case in cases)
            runs_on = Counter(str(case.get("vm_runs_on")) for case in cases)
            lines.append(f"{suite}: {len(cases)} cases, outcomes {json.dumps(dict(tally))}")
            lines.append(f"{suite}: VM runs on {json.dumps(dict(runs_on))}")
            lines.append(
                f"{suite}: VM lost by the migration {runs_on['nowhere']},"
                f" run twice {runs_on['both']}"
            )
            for case in cases:
                where = " ".join(
                    f"{key}={value}"
                    for key, value in case.items()
                    if key not in ("outcome", "vm_runs_on")
                )
                lines.append(f"{suite}:   {where}: {case['outcome']}")
        return lines


OUTCOMES = OutcomeLog()
