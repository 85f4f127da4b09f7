"""MachineConfig: defaults, validation messages, and the dict round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsim import PAGE_SIZE, ConfigError, Fill, MachineConfig, WorkloadKind


def test_defaults_match_the_documented_machine():
    config = MachineConfig()

    assert config.machine == "livemig-virt-1.0"
    assert config.ram_mib == 256
    assert config.fill is Fill.RANDOM
    assert config.workload is WorkloadKind.RANDOM
    assert config.dirty_rate == 20_000
    assert config.tick_hz == 1000
    assert config.ram_bytes == 256 * 1024 * 1024
    assert config.n_pages == config.ram_bytes // PAGE_SIZE


def _fill_fields(fill: Fill) -> st.SearchStrategy[dict[str, object]]:
    """A fill and, for the content fills, the source and digest they need."""
    digest = st.text("0123456789abcdef", min_size=32, max_size=32)
    if fill is Fill.IMAGE:
        return st.fixed_dictionaries(
            {"fill": st.just(fill), "fill_source": st.text(min_size=1, max_size=50),
             "fill_digest": digest}
        )  # fmt: skip
    if fill is Fill.MIXED:
        return st.fixed_dictionaries({"fill": st.just(fill), "fill_digest": digest})
    return st.just({"fill": fill})


configs = st.sampled_from(Fill).flatmap(_fill_fields).flatmap(lambda fill: st.builds(
    MachineConfig,
    ram_mib=st.integers(4, 65536),
    **{key: st.just(value) for key, value in fill.items()},
    workload=st.sampled_from(WorkloadKind),
    dirty_rate=st.integers(0, 100_000_000),
    tick_hz=st.integers(1, 1_000_000),
    hot_mib=st.integers(1, 65536),
    hot_percent=st.integers(0, 100),
    seed=st.integers(0, 2**64 - 1),
    vcpus=st.integers(1, 8),
    uuid=st.none() | st.uuids().map(str),
))  # fmt: skip


@given(configs)
def test_to_dict_is_json_and_from_dict_inverts_it(config):
    data = json.loads(json.dumps(config.to_dict()))

    assert config == MachineConfig.from_dict(data)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ram_mib", 2, "ram_mib: expected an integer in 4..65536, got 2"),
        ("ram_mib", 65537, "ram_mib: expected an integer in 4..65536, got 65537"),
        ("ram_mib", True, "ram_mib: expected an integer in 4..65536, got True"),
        ("ram_mib", "256", "ram_mib: expected an integer in 4..65536, got '256'"),
        ("vcpus", 9, "vcpus: expected an integer in 1..8, got 9"),
        ("seed", -1, "seed: expected an integer in 0..18446744073709551615, got -1"),
        ("seed", 2**64, "seed: expected an integer in 0..18446744073709551615"),
        ("hot_percent", 101, "hot_percent: expected an integer in 0..100, got 101"),
        ("tick_hz", 0, "tick_hz: expected an integer in 1..1000000, got 0"),
        ("dirty_rate", -5, "dirty_rate: expected an integer in 0..100000000, got -5"),
        ("working_set_mib", 300, "working_set_mib: expected an integer in 1..256, got 300"),
        (
            "fill",
            "ones",
            "fill: expected one of 'zero', 'random', 'pattern', 'image', 'mixed', got 'ones'",
        ),
        ("workload", 3, "workload: expected one of 'ab', 'random', 'hotset', 'idle', got 3"),
        ("machine", "", "machine: expected a non-empty string"),
        ("uuid", "not-a-uuid", "uuid: expected a UUID such as"),
    ],
)
def test_from_dict_names_the_key_and_the_allowed_values(key, value, expected):
    with pytest.raises(ConfigError) as caught:
        MachineConfig.from_dict({key: value})

    assert expected in str(caught.value)


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown configuration key\\(s\\): colour, size"):
        MachineConfig.from_dict({"size": 1, "colour": "red"})


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="vcpus"):
        MachineConfig(vcpus=0)


def test_uuid_must_be_canonical():
    canonical = "12345678-1234-5678-1234-567812345678"

    assert canonical == MachineConfig(uuid=canonical).uuid
    with pytest.raises(ConfigError, match="uuid"):
        MachineConfig(uuid="{12345678-1234-5678-1234-567812345678}")


def test_hot_set_larger_than_ram_is_clamped_not_refused():
    assert MachineConfig(ram_mib=4).hot_mib == 16
