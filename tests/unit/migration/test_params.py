"""Migration parameters and capabilities: QEMU names, defaults, and argument errors."""

from __future__ import annotations

import pytest

from migration.errors import ParameterError
from migration.params import MigrationCapabilities, MigrationParameters, parameter_names


def test_defaults_follow_qemu_except_bandwidth() -> None:
    """Downtime 300 ms as in QEMU; bandwidth unlimited (0) on purpose."""
    qmp = MigrationParameters().to_qmp()

    assert 300 == qmp["downtime-limit"]
    assert 0 == qmp["max-bandwidth"]
    assert 0 == qmp["avail-switchover-bandwidth"]


def test_update_returns_new_value_and_keeps_the_rest() -> None:
    params = MigrationParameters().updated({"downtime-limit": 1, "max-bandwidth": 3_000_000})

    assert 1 == params.downtime_limit_ms
    assert 3_000_000 == params.max_bandwidth_bytes_per_s
    assert MigrationParameters().peer_timeout_ms == params.peer_timeout_ms


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"downtime-limit": 2_000_001},
            "Parameter 'downtime-limit' expects an integer in the range of 0 to 2000000 ms",
        ),
        ({"downtime-limit": -1}, "in the range of 0 to 2000000 ms"),
        (
            {"max-bandwidth": "fast"},
            "Invalid parameter type for 'max-bandwidth', expected: integer",
        ),
        ({"downtime-limit": True}, "expected: integer"),
        ({"compress-level": 1}, "Parameter 'compress-level' is unexpected"),
    ],
)
def test_bad_values_name_the_parameter_and_range(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        MigrationParameters().updated(changes)


def test_a_bad_value_changes_nothing() -> None:
    """Validation happens before anything is applied: a rejected update is all-or-nothing."""
    params = MigrationParameters()

    with pytest.raises(ParameterError):
        params.updated({"downtime-limit": 5, "max-bandwidth": -5})

    assert 300 == params.downtime_limit_ms


def test_every_parameter_is_reported() -> None:
    assert list(parameter_names()) == list(MigrationParameters().to_qmp())


def test_capabilities_default_off_but_return_path() -> None:
    states = {c["capability"]: c["state"] for c in MigrationCapabilities().to_qmp()}

    assert {
        "auto-converge": False,
        "events": False,
        "return-path": True,
        "validate-uuid": False,
        "pause-before-switchover": False,
        "dirty-limit": False,
        "x-digest-check": False,
        "multifd": False,
        "xbzrle": False,
        "postcopy-ram": False,
        "postcopy-blocktime": False,
        "postcopy-preempt": False,
        "x-postcopy-xbzrle": False,
    } == states


def test_the_throttle_parameters_have_qemus_defaults() -> None:
    qmp = MigrationParameters().to_qmp()

    assert {
        "throttle-trigger-threshold": 50,
        "cpu-throttle-initial": 20,
        "cpu-throttle-increment": 10,
        "cpu-throttle-tailslow": False,
        "max-cpu-throttle": 99,
        "x-throttle-trigger-period": 1000,
        "vcpu-dirty-limit": 1,
        "x-vcpu-dirty-limit-period": 1000,
        "x-completion-timeout-per-gib": 0,
        "x-progress-timeout": 0,
        "x-timeout-action": "cancel",
    }.items() <= qmp.items()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cpu-throttle-initial": 100}, "'cpu-throttle-initial' expects an integer in the range"),
        ({"cpu-throttle-tailslow": 1}, "'cpu-throttle-tailslow', expected: boolean"),
        ({"x-throttle-trigger-period": 99}, "'x-throttle-trigger-period' expects an integer"),
        ({"x-timeout-action": "stop"}, "does not accept value 'stop'"),
        ({"vcpu-dirty-limit": 0}, "'vcpu-dirty-limit' expects an integer in the range of 1"),
    ],
)
def test_throttle_and_policy_values_are_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        MigrationParameters().updated(changes)


def test_postcopy_is_a_timeout_action_and_excludes_multifd() -> None:
    assert (
        "postcopy" == MigrationParameters().updated({"x-timeout-action": "postcopy"}).timeout_action
    )
    with pytest.raises(ParameterError, match="Postcopy is not yet compatible with multifd"):
        MigrationCapabilities().updated({"multifd": True, "postcopy-ram": True})


def test_dirty_limit_and_auto_converge_exclude_each_other() -> None:
    caps = MigrationCapabilities().updated({"auto-converge": True})

    with pytest.raises(ParameterError, match="dirty-limit conflicts with auto-converge"):
        caps.updated({"dirty-limit": True})
    assert caps.updated({"auto-converge": False, "dirty-limit": True}).dirty_limit


def test_unknown_capability_is_refused() -> None:
    with pytest.raises(ParameterError, match="does not accept value 'compress'"):
        MigrationCapabilities().updated({"compress": True})


def test_wire_capabilities_are_those_the_destination_follows() -> None:
    caps = MigrationCapabilities(digest_check=True, validate_uuid=True, events=True)

    assert ("validate-uuid", "x-digest-check") == caps.wire_names()
    assert () == MigrationCapabilities().wire_names()


def test_postcopy_preempt_needs_postcopy_ram() -> None:
    with pytest.raises(ParameterError, match="Postcopy preempt requires postcopy-ram"):
        MigrationCapabilities().updated({"postcopy-preempt": True})
    caps = MigrationCapabilities().updated({"postcopy-ram": True, "postcopy-preempt": True})
    assert "postcopy-preempt" in caps.wire_names()


def test_postcopy_xbzrle_needs_postcopy_ram_and_xbzrle() -> None:
    for both in ({"postcopy-ram": True}, {"xbzrle": True}, {}):
        with pytest.raises(ParameterError, match="requires postcopy-ram and xbzrle"):
            MigrationCapabilities().updated({**both, "x-postcopy-xbzrle": True})
    caps = MigrationCapabilities().updated(
        {"postcopy-ram": True, "xbzrle": True, "x-postcopy-xbzrle": True}
    )
    assert "x-postcopy-xbzrle" in caps.wire_names()  # an older destination refuses it at setup
    assert "x-postcopy-xbzrle" not in MigrationCapabilities(xbzrle=True).wire_names()
