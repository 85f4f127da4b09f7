"""QMP commands: the registry, the error a command raises, and typed argument access.

A handler is ``async def handler(args: Args) -> object``. It reads its arguments through `Args`,
calls ``args.finish()`` before acting (so an unexpected argument is refused before any side effect,
as QEMU's generated marshallers do), and returns the JSON value for ``"return"`` (None means
``{}``). It reports failure by raising `QMPError`. Argument errors carry QEMU's exact wording::

    Parameter 'uri' is missing
    Parameter 'foo' is unexpected
    Invalid parameter type for 'uri', expected: string
    Parameter 'downtime-limit' expects an integer in the range of 0 to 2000000 ms
    Parameter 'state' does not accept value 'x'
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar, overload

from netio.errors import NetIOError

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping

__all__ = [
    "Args",
    "CommandRegistry",
    "ErrorClass",
    "Handler",
    "QMPError",
    "RegisteredCommand",
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_COMMAND_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_T = TypeVar("_T")


class _Missing(enum.Enum):
    MISSING = enum.auto()


_MISSING: Final = _Missing.MISSING


class ErrorClass(enum.StrEnum):
    """QEMU's QMP error classes (``QapiErrorClass``)."""

    GENERIC_ERROR = "GenericError"
    COMMAND_NOT_FOUND = "CommandNotFound"
    DEVICE_NOT_ACTIVE = "DeviceNotActive"
    DEVICE_NOT_FOUND = "DeviceNotFound"
    KVM_MISSING_CAP = "KVMMissingCap"


class QMPError(NetIOError):
    """A command failed; the QMP client receives ``{"error": {"class", "desc"}}``.

    Attributes:
        error_class: The QMP error class, usually ``GenericError``.
        desc: The human-readable description.
    """

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = str(error_class)
        self.desc = desc

    @classmethod
    def generic(cls, desc: str) -> QMPError:
        """Return a ``GenericError`` with this description."""
        return cls(ErrorClass.GENERIC_ERROR, desc)

    def __repr__(self) -> str:
        return f"QMPError({self.error_class!r}, {self.desc!r})"


class Args:
    """Typed, QEMU-worded access to a command's ``arguments`` object.

    Each accessor consumes its member. A required member that is absent raises
    ``Parameter 'NAME' is missing``; pass a default to make it optional. `finish` raises for any
    member nobody consumed. Nested objects (`struct`) are `Args` too, named ``outer.inner`` or
    ``list[0]`` in messages, as QEMU does.
    """

    def __init__(self, arguments: Mapping[str, object], *, path: str = "") -> None:
        """Wrap an arguments object.

        Args:
            arguments: The decoded ``arguments`` JSON object.
            path: How this object is named in messages when nested (``""`` at the top).
        """
        self._members = dict(arguments)
        self._unconsumed = dict.fromkeys(arguments)
        self._path = path
        self._children: list[Args] = []
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether `finish` has run without error."""
        return self._finished

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __repr__(self) -> str:
        return f"Args({self._members!r})"

    def rest(self) -> dict[str, object]:
        """Take every member not read yet (an open-ended command such as `object-add`)."""
        taken = {name: self._members[name] for name in self._unconsumed}
        self._unconsumed.clear()
        return taken

    def full_name(self, name: str) -> str:
        """Return how member ``name`` is named in error messages (``a.b``, ``list[0].c``)."""
        return f"{self._path}.{name}" if self._path else name

    def _take(self, name: str) -> object:
        self._unconsumed.pop(name, None)
        return self._members.get(name, _MISSING)

    def _type_error(self, name: str, expected: str) -> QMPError:
        return QMPError.generic(
            f"Invalid parameter type for '{self.full_name(name)}', expected: {expected}"
        )

    def _missing(self, name: str) -> QMPError:
        return QMPError.generic(f"Parameter '{self.full_name(name)}' is missing")

    # -- scalars -------------------------------------------------------------------------

    @overload
    def string(self, name: str) -> str: ...
    @overload
    def string(self, name: str, default: _T) -> str | _T: ...
    def string(self, name: str, default: object = _MISSING) -> object:
        """Return a string member (``expected: string``)."""
        value = self._take(name)
        if value is _MISSING:
            return self._default(name, default)
        if not isinstance(value, str):
            raise self._type_error(name, "string")
        return value

    @overload
    def boolean(self, name: str) -> bool: ...
    @overload
    def boolean(self, name: str, default: _T) -> bool | _T: ...
    def boolean(self, name: str, default: object = _MISSING) -> object:
        """Return a boolean member (``expected: boolean``)."""
        value = self._take(name)
        if value is _MISSING:
            return self._default(name, default)
        if not isinstance(value, bool):
            raise self._type_error(name, "boolean")
        return value

    @overload
    def number(self, name: str) -> float: ...
    @overload
    def number(self, name: str, default: _T) -> float | _T: ...
    def number(self, name: str, default: object = _MISSING) -> object:
        """Return a number member, integer or not (``expected: number``)."""
        value = self._take(name)
        if value is _MISSING:
            return self._default(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._type_error(name, "number")
        return float(value)

    @overload
    def integer(
        self, name: str, *, min_value: int = ..., max_value: int = ..., unit: str | None = ...
    ) -> int: ...
    @overload
    def integer(
        self,
        name: str,
        default: _T,
        *,
        min_value: int = ...,
        max_value: int = ...,
        unit: str | None = ...,
    ) -> int | _T: ...
    def integer(
        self,
        name: str,
        default: object = _MISSING,
        *,
        min_value: int = INT64_MIN,
        max_value: int = INT64_MAX,
        unit: str | None = None,
    ) -> object:
        """Return an integer member, checked against a range.

        A non-integer (or an integer beyond int64, which QEMU cannot represent as one) is
        ``expected: integer``; one outside ``[min_value, max_value]`` is
        ``Parameter 'NAME' expects an integer in the range of MIN to MAX[ UNIT]``.
        """
        value = self._take(name)
        if value is _MISSING:
            return self._default(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not INT64_MIN <= value <= INT64_MAX
        ):
            raise self._type_error(name, "integer")
        if not min_value <= value <= max_value:
            suffix = f" {unit}" if unit else ""
            raise QMPError.generic(
                f"Parameter '{self.full_name(name)}' expects an integer in the range of "
                f"{min_value} to {max_value}{suffix}"
            )
        return value

    @overload
    def enum(self, name: str, allowed: Collection[str]) -> str: ...
    @overload
    def enum(self, name: str, allowed: Collection[str], default: _T) -> str | _T: ...
    def enum(self, name: str, allowed: Collection[str], default: object = _MISSING) -> object:
        """Return a string member that must be one of ``allowed``.

        Raises ``Parameter 'NAME' does not accept value 'X'`` otherwise.
        """
        value = self.string(name, default)
        if value is not default and value not in allowed:
            raise QMPError.generic(f"Parameter '{name}' does not accept value '{value}'")
        return value

    def value(self, name: str, default: object = _MISSING) -> object:
        """Return a member of any JSON type, unchecked."""
        value = self._take(name)
        if value is _MISSING:
            return self._default(name, default)
        return value

    # -- containers ----------------------------------------------------------------------

    @overload
    def array(self, name: str) -> list[object]: ...
    @overload
    def array(self, name: str, default: _T) -> list[object] | _T: ...
    def array(self, name: str, default: object = _MISSING) -> object:
        """Return an array member, elements unchecked (``expected: array``)."""
        value = self._take(name)
        if value is _MISSING:
            return self._default(name, default)
        if not isinstance(value, list):
            raise self._type_error(name, "array")
        return value

    def string_array(self, name: str, default: list[str] | None = None) -> list[str]:
        """Return an array of strings (``default``, or missing, when absent).

        A bad element is reported as ``NAME[i]`` ``expected: string``.
        """
        values = self.array(name) if default is None or name in self else default
        strings: list[str] = []
        for index, element in enumerate(values):
            if not isinstance(element, str):
                raise self._type_error(f"{name}[{index}]", "string")
            strings.append(element)
        self._take(name)
        return strings

    def enum_array(
        self, name: str, allowed: Collection[str], default: list[str] | None = None
    ) -> list[str]:
        """Return an array of enum strings (``default``, or missing, when absent).

        QEMU visits list elements without a name, so an unknown element is reported as
        ``Parameter 'null' does not accept value 'X'`` (its exact wording).
        """
        values = self.string_array(name, default)
        for element in values:
            if element not in allowed:
                raise QMPError.generic(f"Parameter 'null' does not accept value '{element}'")
        return values

    @overload
    def struct(self, name: str) -> Args: ...
    @overload
    def struct(self, name: str, default: _T) -> Args | _T: ...
    def struct(self, name: str, default: object = _MISSING) -> object:
        """Return an object member as nested `Args` (``expected: object``)."""
        value = self._take(name)
        if value is _MISSING:
            return self._default(name, default)
        if not isinstance(value, dict):
            raise self._type_error(name, "object")
        return self._child(value, self.full_name(name))

    def struct_array(self, name: str) -> list[Args]:
        """Return an array of objects as nested `Args` named ``NAME[i]``."""
        values = self.array(name)
        children = []
        for index, element in enumerate(values):
            if not isinstance(element, dict):
                raise self._type_error(f"{name}[{index}]", "object")
            children.append(self._child(element, f"{self.full_name(name)}[{index}]"))
        return children

    def _child(self, members: Mapping[str, object], path: str) -> Args:
        child = Args(members, path=path)
        self._children.append(child)
        return child

    def _default(self, name: str, default: object) -> object:
        if default is _MISSING:
            raise self._missing(name)
        return default

    # -- completion ----------------------------------------------------------------------

    def unconsumed(self) -> Iterator[str]:
        """Yield the names of members no accessor has read."""
        return iter(self._unconsumed)

    def finish(self) -> None:
        """Refuse members nobody consumed, here and in nested objects read so far.

        Raises:
            QMPError: ``Parameter 'NAME' is unexpected``.
        """
        for name in self._unconsumed:
            raise QMPError.generic(f"Parameter '{self.full_name(name)}' is unexpected")
        for child in self._children:
            child.finish()
        self._finished = True


Handler = Callable[[Args], Awaitable[object]]


@dataclass(frozen=True, kw_only=True, slots=True)
class RegisteredCommand:
    """A command in a `CommandRegistry`."""

    name: str
    handler: Handler
    allow_before_negotiation: bool = False


class CommandRegistry:
    """The QMP commands a server offers (besides its built-ins)."""

    def __init__(self) -> None:
        self._commands: dict[str, RegisteredCommand] = {}

    def register(
        self, name: str, handler: Handler, *, allow_before_negotiation: bool = False
    ) -> None:
        """Add a command.

        Args:
            name: The QMP command name, e.g. ``query-migrate``.
            handler: ``async def handler(args: Args) -> object``.
            allow_before_negotiation: Accept the command before ``qmp_capabilities``.

        Raises:
            ValueError: The name is malformed or already registered.
        """
        if not _COMMAND_NAME.fullmatch(name):
            raise ValueError(f"invalid QMP command name {name!r}")
        if name in self._commands:
            raise ValueError(f"QMP command {name!r} is already registered")
        self._commands[name] = RegisteredCommand(
            name=name, handler=handler, allow_before_negotiation=allow_before_negotiation
        )

    def command(
        self, name: str, *, allow_before_negotiation: bool = False
    ) -> Callable[[Handler], Handler]:
        """Register the decorated handler under ``name`` (see `register`)."""

        def decorate(handler: Handler) -> Handler:
            self.register(name, handler, allow_before_negotiation=allow_before_negotiation)
            return handler

        return decorate

    def get(self, name: str) -> RegisteredCommand | None:
        """Return the command called ``name``, or None."""
        return self._commands.get(name)

    def names(self) -> list[str]:
        """Return the command names in registration order."""
        return list(self._commands)

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def __len__(self) -> int:
        return len(self._commands)
