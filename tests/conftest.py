"""Test-wide configuration: Hypothesis profiles and the markers' skip rules."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
