"""QMP command registry and typed arguments with QEMU's error wording."""

from __future__ import annotations

import pytest

from netio.qmp import Args, CommandRegistry, ErrorClass, QMPError


def error_of(call) -> tuple[str, str]:
    with pytest.raises(QMPError) as caught:
        call()
    return caught.value.error_class, caught.value.desc


def test_typed_accessors_return_values():
    args = Args(
        {"uri": "tcp:127.0.0.1:1", "n": 5, "on": True, "rate": 1, "list": [1], "obj": {"a": 1}}
    )

    assert "tcp:127.0.0.1:1" == args.string("uri")
    assert 5 == args.integer("n", min_value=0, max_value=10)
    assert args.boolean("on") is True
    assert 1.0 == args.number("rate")
    assert [1] == args.array("list")
    assert 1 == args.struct("obj").integer("a")
    args.finish()
    assert args.finished


def test_defaults_make_members_optional():
    args = Args({})

    assert args.string("uri", None) is None
    assert 300 == args.integer("downtime-limit", 300)
    assert args.boolean("resume", False) is False
    assert 0.5 == args.number("x", 0.5)
    assert [] == args.array("l", [])
    assert args.struct("o", None) is None
    assert "normal" == args.enum("mode", {"normal"}, "normal")
    assert ["a"] == args.string_array("s", ["a"])
    args.finish()


@pytest.mark.parametrize(
    ("call", "desc"),
    [
        (lambda a: a.string("uri"), "Parameter 'uri' is missing"),
        (lambda a: a.string("n"), "Invalid parameter type for 'n', expected: string"),
        (lambda a: a.string("nul"), "Invalid parameter type for 'nul', expected: string"),
        (lambda a: a.integer("s"), "Invalid parameter type for 's', expected: integer"),
        (lambda a: a.integer("f"), "Invalid parameter type for 'f', expected: integer"),
        (lambda a: a.integer("t"), "Invalid parameter type for 't', expected: integer"),
        (lambda a: a.integer("huge"), "Invalid parameter type for 'huge', expected: integer"),
        (lambda a: a.boolean("n"), "Invalid parameter type for 'n', expected: boolean"),
        (lambda a: a.number("s"), "Invalid parameter type for 's', expected: number"),
        (lambda a: a.number("t"), "Invalid parameter type for 't', expected: number"),
        (lambda a: a.array("s"), "Invalid parameter type for 's', expected: array"),
        (lambda a: a.struct("s"), "Invalid parameter type for 's', expected: object"),
        (lambda a: a.enum("s", {"a", "b"}), "Parameter 's' does not accept value 'text'"),
        (lambda a: a.enum("n", {"a"}), "Invalid parameter type for 'n', expected: string"),
        (
            lambda a: a.integer("n", min_value=0, max_value=3),
            "Parameter 'n' expects an integer in the range of 0 to 3",
        ),
        (
            lambda a: a.integer("neg", min_value=0, max_value=2000000, unit="ms"),
            "Parameter 'neg' expects an integer in the range of 0 to 2000000 ms",
        ),
        (
            lambda a: a.string_array("mixed"),
            "Invalid parameter type for 'mixed[1]', expected: string",
        ),
        (lambda a: a.enum_array("enums", {"oob"}), "Parameter 'null' does not accept value 'x'"),
        (
            lambda a: a.struct("obj").string("inner"),
            "Invalid parameter type for 'obj.inner', expected: string",
        ),
        (lambda a: a.struct("obj").string("absent"), "Parameter 'obj.absent' is missing"),
        (
            lambda a: a.struct_array("objs")[1].integer("v"),
            "Invalid parameter type for 'objs[1].v', expected: integer",
        ),
        (
            lambda a: a.struct_array("mixed"),
            "Invalid parameter type for 'mixed[0]', expected: object",
        ),
    ],
)
def test_argument_errors_use_qemu_wording(call, desc):
    args = Args(
        {
            "n": 7,
            "neg": -1,
            "s": "text",
            "f": 1.5,
            "t": True,
            "nul": None,
            "huge": 2**63,
            "mixed": ["a", 1],
            "enums": ["x"],
            "obj": {"inner": 1},
            "objs": [{"v": 1}, {"v": "x"}],
        }
    )

    assert (ErrorClass.GENERIC_ERROR, desc) == error_of(lambda: call(args))


def test_finish_rejects_unconsumed_members_here_and_nested():
    args = Args({"uri": "x", "foo": 1})
    args.string("uri")
    assert ("GenericError", "Parameter 'foo' is unexpected") == error_of(args.finish)

    nested = Args({"channels": [{"channel-type": "main", "extra": 1}]})
    [channel] = nested.struct_array("channels")
    channel.string("channel-type")
    assert ("GenericError", "Parameter 'channels[0].extra' is unexpected") == error_of(
        nested.finish
    )
    assert ["extra"] == list(channel.unconsumed())


def test_value_returns_anything_and_membership():
    args = Args({"x": {"any": [None]}})

    assert "x" in args
    assert {"any": [None]} == args.value("x")
    assert 3 == args.value("y", 3)
    assert args.full_name("y") == "y"
    assert "Args(" in repr(args)


def test_qmp_error_fields():
    error = QMPError(ErrorClass.DEVICE_NOT_ACTIVE, "No migration in progress")

    assert "DeviceNotActive" == error.error_class
    assert "No migration in progress" == error.desc
    assert "No migration in progress" == str(error)
    assert "QMPError('DeviceNotActive', 'No migration in progress')" == repr(error)
    assert ("GenericError", "x") == (QMPError.generic("x").error_class, "x")


def test_registry_register_and_decorator():
    registry = CommandRegistry()

    async def stop(args: Args) -> object:
        return None

    registry.register("stop", stop)

    @registry.command("x-query-vm", allow_before_negotiation=True)
    async def query_vm(args: Args) -> object:
        return {}

    assert ["stop", "x-query-vm"] == registry.names()
    assert "stop" in registry
    assert 2 == len(registry)
    command = registry.get("x-query-vm")
    assert command is not None
    assert command.allow_before_negotiation
    assert registry.get("absent") is None


@pytest.mark.parametrize("name", ["", "has space", "1starts-with-digit"])
def test_registry_rejects_bad_names(name):
    async def handler(args: Args) -> object:
        return None

    with pytest.raises(ValueError, match="invalid QMP command name"):
        CommandRegistry().register(name, handler)


def test_registry_rejects_duplicates():
    async def handler(args: Args) -> object:
        return None

    registry = CommandRegistry()
    registry.register("stop", handler)
    with pytest.raises(ValueError, match="'stop' is already registered"):
        registry.register("stop", handler)
