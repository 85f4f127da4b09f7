"""Test-wide configuration: Hypothesis profiles and the fault cases' tally."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, settings

from tests.helpers.outcomes import OUTCOMES

if TYPE_CHECKING:
    import pytest

# "ci" is derandomised so a CI failure reproduces; "dev" explores; "long" is for hand runs.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how the fault cases ended (the fault matrix and the cut campaign)."""
    lines = OUTCOMES.summary_lines()
    if lines:
        terminalreporter.section("fault cases")
        for line in lines:
            terminalreporter.write_line(line)
