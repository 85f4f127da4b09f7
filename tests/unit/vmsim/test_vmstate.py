"""VMStateDescription: encoding, versions, subsections, hooks, errors and vmdesc."""

from __future__ import annotations

import copy

import pytest
from vmstate_fixtures import THING_VMSD, Thing, snapshot

from vmsim import (
    FieldError,
    UnknownSubsectionError,
    VersionTooNewError,
    VersionTooOldError,
    VMStateDefinitionError,
    VMStateDescription,
    field_uint,
    field_vbuffer,
)


def saved_thing(**changes):
    thing = Thing()
    thing.u64 = 2**64 - 1
    thing.i8 = -128
    thing.data_len, thing.data = 3, b"xyz"
    thing.extra_on, thing.extra = True, 77
    for key, value in changes.items():
        setattr(thing, key, value)
    return thing, THING_VMSD.save(thing)


def test_saved_state_is_plain_values():
    _, state = saved_thing()

    assert {"fields", "subsections"} == set(state)
    assert state["fields"]["u64"] == 2**64 - 1
    assert state["fields"]["data"] == b"xyz"
    assert state["fields"]["words"] == [0, 0, 0]
    assert state["fields"]["inner"] == {"fields": {"a": 0, "b": [0, 0]}, "subsections": {}}
    assert (state["subsections"]) == {
        "thing/extra": {"version_id": 2, "fields": {"extra": 77}, "subsections": {}}
    }
    assert "optional" not in state["fields"]


def test_hooks_run_in_qemu_order():
    thing, state = saved_thing()
    target = Thing()
    THING_VMSD.load(target, state, 3)

    assert thing.calls == ["pre_save", "post_save"]
    assert target.calls == ["pre_load", "extra.pre_load", "extra.post_load:2", "post_load:3"]


def test_saving_at_an_older_version_leaves_newer_fields_out_and_loading_keeps_them():
    _, state = saved_thing(newer=9)
    old_state = THING_VMSD.save(saved_thing(newer=9)[0], version_id=1)
    target = Thing()
    target.newer = 5
    THING_VMSD.load(target, old_state, 1)

    assert state["fields"]["newer"] == 9
    assert "newer" not in old_state["fields"]
    assert target.newer == 5


def test_field_exists_decides_presence_on_both_sides():
    _, state = saved_thing(has_optional=True, optional=4)
    target = Thing()
    target.has_optional = True
    THING_VMSD.load(target, state, 3)

    assert state["fields"]["optional"] == 4
    assert target.optional == 4


def test_absent_subsection_keeps_defaults():
    _, state = saved_thing(extra_on=False, extra=5)
    target = Thing()
    target.extra = 123
    THING_VMSD.load(target, state, 3)

    assert state["subsections"] == {}
    assert target.extra == 123


def test_too_new_and_too_old_use_qemus_wording():
    _, state = saved_thing()

    with pytest.raises(VersionTooNewError) as new:
        THING_VMSD.load(Thing(), state, 4)
    with pytest.raises(VersionTooOldError) as old:
        THING_VMSD.load(Thing(), state, 0)

    assert str(new.value) == "thing: incoming version_id 4 is too new for local version_id 3"
    assert (
        str(old.value) == "thing: incoming version_id 0 is too old for local minimum version_id 1"
    )
    assert new.value.device == "thing"


def test_subsection_versions_are_checked():
    _, state = saved_thing()
    state["subsections"]["thing/extra"]["version_id"] = 3

    with pytest.raises(VersionTooNewError, match="thing/extra: incoming version_id 3 is too new"):
        THING_VMSD.load(Thing(), state, 3)


def test_unknown_subsection_is_refused():
    _, state = saved_thing()
    state["subsections"]["thing/turbo"] = {"version_id": 1, "fields": {}, "subsections": {}}

    with pytest.raises(UnknownSubsectionError) as caught:
        THING_VMSD.load(Thing(), state, 3)

    assert str(caught.value) == "thing: VM subsection 'thing/turbo' in 'thing' does not exist"


def test_subsection_of_another_device_is_refused():
    _, state = saved_thing()
    state["subsections"]["other/extra"] = {"version_id": 1, "fields": {}, "subsections": {}}

    with pytest.raises(UnknownSubsectionError, match="does not start with the name of 'thing'"):
        THING_VMSD.load(Thing(), state, 3)


def mutate(state, path, value):
    state = copy.deepcopy(state)
    target = state
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return state


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        (("fields", "u8"), 256, "u8", "thing: field 'u8': value 256 out of range for uint8"),
        (
            ("fields", "i16"),
            -(2**15) - 1,
            "i16",
            "field 'i16': value -32769 out of range for int16",
        ),
        (("fields", "u32"), "7", "u32", "thing: field 'u32': expected uint32, got str"),
        (("fields", "u64"), True, "u64", "thing: field 'u64': expected uint64, got bool"),
        (("fields", "flag"), 1, "flag", "thing: field 'flag': expected bool, got int"),
        (("fields", "tag"), b"abc", "tag", "thing: field 'tag': expected 4 bytes, got 3"),
        (("fields", "data"), b"xy", "data", "field 'data': 2 bytes but length field 'data_len'"),
        (("fields", "words"), [1, 2], "words", "field 'words': expected 3 elements, got 2"),
        (("fields", "words"), [1, -2, 3], "words", "element 1: value -2 out of range for uint32"),
        (("fields", "pc"), 1, "pc", "thing: field 'pc': not part of 'thing' at version_id 3"),
        (("fields", "u16"), KeyError, "u16", "thing: field 'u16': missing"),
        (("fields", "inner", "fields", "a"), 300, "a", "inner: field 'a': value 300 out of range"),
        (
            ("subsections", "thing/extra", "fields", "extra"),
            -1,
            "extra",
            "thing/extra: field 'extra': value -1 out of range for uint32",
        ),
    ],
)
def test_bad_fields_name_device_and_field_and_change_nothing(path, value, field, message):
    _, state = saved_thing()
    target = Thing()
    before = snapshot(target)

    with pytest.raises(FieldError) as caught:
        THING_VMSD.load(target, mutate(state, path, value), 3)

    assert message in str(caught.value)
    assert field == caught.value.field
    assert before == snapshot(target)
    assert target.calls == []


@pytest.mark.parametrize("state", [None, {}, {"fields": {}, "other": {}}, {"fields": []}])
def test_malformed_states_are_field_errors(state):
    with pytest.raises(FieldError, match="malformed"):
        THING_VMSD.load(Thing(), state, 3)


def test_describe_is_qemus_vmdesc_shape():
    description = THING_VMSD.describe()
    fields = {field["name"]: field for field in description["fields"]}

    assert (description["vmsd_name"], description["version"]) == ("thing", 3)
    assert fields["u16"] == {"name": "u16", "type": "uint16", "size": 2}
    assert fields["i64"] == {"name": "i64", "type": "int64", "size": 8}
    assert fields["tag"] == {"name": "tag", "type": "buffer", "size": 4}
    assert fields["words"] == {"name": "words", "type": "uint32", "size": 4, "array_len": 3}
    assert fields["inner"]["struct"]["vmsd_name"] == "inner"
    assert [sub["vmsd_name"] for sub in description["subsections"]] == ["thing/extra"]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"minimum_version_id": 2, "version_id": 1}, "minimum_version_id"),
        ({"fields": (field_uint("a"), field_uint("a"))}, "duplicate field 'a'"),
        ({"fields": (field_uint("a", version_id=5),)}, "newer than the VMSD"),
        ({"fields": (field_vbuffer("d", "n", 4), field_uint("n"))}, "declared before it"),
        (
            {"subsections": (VMStateDescription(name="x/y", version_id=1, needed=bool),)},
            "must start with 'dev'",
        ),
        ({"subsections": (VMStateDescription(name="dev/y", version_id=1),)}, "no needed()"),
    ],
)
def test_malformed_descriptions_fail_at_definition(kwargs, problem):
    arguments = {"name": "dev", "version_id": 1} | kwargs

    with pytest.raises(VMStateDefinitionError, match=problem):
        VMStateDescription(**arguments)


def test_integer_widths_are_checked():
    with pytest.raises(VMStateDefinitionError, match="integer width"):
        field_uint("x", 12)
