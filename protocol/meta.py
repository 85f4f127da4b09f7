"""Frame metadata: msgpack maps, decoded with explicit limits and checked field by field.

Every frame kind has an exact key set: missing and unknown keys are refused. The ``take_*``
helpers read one field and raise ``LocalProtocolError(BAD_METADATA)`` naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, NoReturn

import msgpack

from protocol.errors import ErrorCode, LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from protocol.checksum import Buffer
    from protocol.limits import Limits

MetaMap = dict[str, Any]
"""A decoded metadata map (msgpack map with str keys)."""

U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFF_FFFF
U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF
_UNPACK_ERRORS: Final = (ValueError, TypeError, msgpack.UnpackException)


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    msg = f"msgpack ext type {code} ({len(data)} bytes) is not allowed"
    raise ValueError(msg)


def bad(message: str) -> LocalProtocolError:
    """A BAD_METADATA error (to raise)."""
    return LocalProtocolError(message, code=ErrorCode.BAD_METADATA)


def pack_meta(meta: Mapping[str, Any]) -> bytes:
    """Encode a metadata map.

    Raises:
        LocalProtocolError: BAD_METADATA if a value has no msgpack encoding.
    """
    try:
        return msgpack.packb(meta, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        msg = f"metadata cannot be encoded: {exc}"
        raise bad(msg) from exc


def unpack_meta(buf: Buffer, limits: Limits) -> MetaMap:
    """Decode a metadata map within ``limits`` (msgpack lengths and nesting depth).

    Raises:
        LocalProtocolError: LIMIT_EXCEEDED for a length or depth limit, else BAD_METADATA.
    """
    try:
        obj = msgpack.unpackb(
            buf,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=limits.max_ext_len,
        )
    except _UNPACK_ERRORS as exc:
        text = str(exc) or type(exc).__name__
        code = ErrorCode.LIMIT_EXCEEDED if "exceeds max_" in text else ErrorCode.BAD_METADATA
        if isinstance(exc, msgpack.StackError):
            code = ErrorCode.LIMIT_EXCEEDED
        msg = f"metadata is not valid msgpack: {text}"
        raise LocalProtocolError(msg, code=code) from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        msg = f"metadata must be a map with str keys, not {type(obj).__name__}"
        raise bad(msg)
    check_depth(obj, limits.max_depth)
    return obj


def check_depth(obj: object, max_depth: int) -> None:
    """Refuse containers nested deeper than ``max_depth`` (iteratively: no recursion).

    Raises:
        LocalProtocolError: LIMIT_EXCEEDED.
    """
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Collection[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            msg = f"metadata nesting depth exceeds max_depth({max_depth})"
            raise LocalProtocolError(msg, code=ErrorCode.LIMIT_EXCEEDED)
        stack.extend((child, depth + 1) for child in children)


def check_keys(meta: Mapping[str, Any], expected: Collection[str], what: str) -> None:
    """Exactly ``expected`` keys must be present.

    Raises:
        LocalProtocolError: BAD_METADATA naming the missing or unknown keys.
    """
    keys = set(meta)
    if keys == set(expected):
        return
    missing = sorted(set(expected) - keys)
    unknown = sorted(keys - set(expected))
    msg = f"{what} metadata: missing keys {missing}, unknown keys {unknown}"
    raise bad(msg)


def take_int(meta: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    """An int (not a bool) in ``lo..hi``."""
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{key!r} must be an int, not {type(value).__name__}"
        raise bad(msg)
    if not lo <= value <= hi:
        msg = f"{key!r} = {value} is out of range {lo}..{hi}"
        raise bad(msg)
    return value


def take_u32(meta: Mapping[str, Any], key: str) -> int:
    """A u32."""
    return take_int(meta, key, 0, U32_MAX)


def take_str(meta: Mapping[str, Any], key: str, *, max_bytes: int, nonempty: bool = True) -> str:
    """A str of at most ``max_bytes`` UTF-8 bytes (and at least one if ``nonempty``)."""
    value = meta[key]
    if not isinstance(value, str):
        msg = f"{key!r} must be a str, not {type(value).__name__}"
        raise bad(msg)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes or (nonempty and not size):
        msg = f"{key!r} must be {int(nonempty)}..{max_bytes} UTF-8 bytes, not {size}"
        raise bad(msg)
    return value


def take_map(meta: Mapping[str, Any], key: str) -> MetaMap:
    """A map with str keys (values are free-form msgpack)."""
    value = meta[key]
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        msg = f"{key!r} must be a map with str keys, not {type(value).__name__}"
        raise bad(msg)
    return value


def take_bool(meta: Mapping[str, Any], key: str) -> bool:
    """A bool."""
    value = meta[key]
    if not isinstance(value, bool):
        msg = f"{key!r} must be a bool, not {type(value).__name__}"
        raise bad(msg)
    return value


def take_bin(meta: Mapping[str, Any], key: str) -> bytes:
    """A bin."""
    value = meta[key]
    if not isinstance(value, bytes):
        msg = f"{key!r} must be bin, not {type(value).__name__}"
        raise bad(msg)
    return value
