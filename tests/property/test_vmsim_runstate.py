"""Run-state machine under random sequences: it follows a model built from the pair list."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmsim import TRANSITIONS, InvalidTransition, RunState, RunStateMachine


@given(st.sampled_from(RunState), st.lists(st.sampled_from(RunState), max_size=50))
def test_random_walks_follow_the_table(initial, requests):
    machine = RunStateMachine(initial)
    model = initial
    for target in requests:
        allowed = target == model or target in TRANSITIONS[model]
        try:
            machine.transition(target)
        except InvalidTransition:
            assert not allowed
        else:
            assert allowed
            model = target
        assert model == machine.state
