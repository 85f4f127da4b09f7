"""CONFIGURATION metadata checks (docs/protocol.md 1.4), through the public API."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.pair import make_config

from protocol import DeviceRef, ErrorCode, LocalProtocolError, SourceConnection
from protocol.config import decode_configuration, encode_configuration
from protocol.limits import Limits


def refused(**changes) -> LocalProtocolError:
    config = dataclasses.replace(make_config(), **changes)
    with pytest.raises(LocalProtocolError) as info:
        SourceConnection(now=0.0).send_configuration(config)
    return info.value


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"page_size": 512}, "out of range 1024..65536"),
        ({"page_size": 131072}, "out of range"),
        ({"page_size": 3072, "ram_size": 3072 * 4}, "not a power of two"),
        ({"ram_size": 4096 * 16 + 1}, "not a multiple of page_size"),
        ({"ram_size": 0}, "out of range"),
        ({"migration_id": ""}, "'migration_id' must be 1..64"),
        ({"machine": "m" * 65}, "'machine' must be 1..64"),
        ({"devices": (DeviceRef(idstr="a", instance_id=0, version_id=1),) * 2}, "twice"),
        ({"devices": (DeviceRef(idstr="", instance_id=0, version_id=1),)}, "'idstr'"),
        ({"devices": (DeviceRef(idstr="a", instance_id=-1, version_id=1),)}, "'instance_id'"),
        ({"devices": (DeviceRef(idstr="a", instance_id=0, version_id=1 << 32),)}, "'version_id'"),
        ({"capabilities": ("x", "x")}, "capability twice"),
        ({"capabilities": ("",)}, "'capability'"),
        ({"uuid": "not-a-uuid"}, "'uuid'"),
        ({"uuid": "12345678-1234-5678-1234-56781234567A"}, "'uuid'"),
        ({"vm": {1: 2}}, "int is not allowed for map key"),
        ({"vm": {b"k": 2}}, "'vm' must be a map with str keys"),
    ],
)
def test_bad_configurations(changes, match):
    error = refused(**changes)
    assert ErrorCode.BAD_METADATA == error.code
    assert match in str(error)


def test_good_configuration_round_trips():
    config = make_config(uuid="12345678-1234-5678-1234-567812345678", capabilities=["a", "b"])
    assert config == decode_configuration(encode_configuration(config), Limits())


def test_keys_are_exact():
    meta = encode_configuration(make_config())
    with pytest.raises(LocalProtocolError, match="unknown keys \\['extra'\\]"):
        decode_configuration({**meta, "extra": 1}, Limits())
    del meta["uuid"]
    with pytest.raises(LocalProtocolError, match="missing keys \\['uuid'\\]"):
        decode_configuration(meta, Limits())


def test_bool_is_not_an_int():
    meta = encode_configuration(make_config())
    meta["devices"] = [["a", True, 1]]
    with pytest.raises(LocalProtocolError, match="'instance_id' must be an int, not bool"):
        decode_configuration(meta, Limits())
    meta["devices"] = [["a", 0]]
    with pytest.raises(LocalProtocolError, match="device entry must be"):
        decode_configuration(meta, Limits())


def test_ram_pages_fit_u32_pfns():
    meta = encode_configuration(make_config())
    meta.update(page_size=1024, ram_size=1024 << 32 + 1)
    with pytest.raises(LocalProtocolError, match="u32 pfns"):
        decode_configuration(meta, Limits(max_ram_bytes=1 << 60))
