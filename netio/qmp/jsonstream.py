r"""Split a QMP byte stream into JSON messages, the way QEMU's json-streamer does.

QMP input is not line-framed: QEMU's lexer counts braces and brackets and hands the parser a
message whenever they balance, so ``{"execute":"a"}{"execute":"b"}`` is two commands and a
command may span many reads. `JSONStreamParser` does the same with a string-aware scan (regular
expressions jump from one structural byte to the next), then decodes each message with the
stdlib ``json`` module and words errors like QEMU (``JSON parse error, expecting value``).

Like QEMU it accepts the ``'single-quoted'`` string extension and the ``\\'`` escape, refuses
duplicate keys, and treats an ASCII control character or a 0xFF byte as a lexical error that
resets the parser (the spec's way for a client to resynchronise). Unlike QEMU, exceeding the
size or nesting limit is fatal: the caller answers with the error and closes the connection.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["JSONInputError", "JSONStreamParser", "ParsedMessage"]

DEFAULT_MAX_MESSAGE_BYTES: Final = 1 << 20
#: Python's json decoder recurses once per level; stay well below the recursion limit.
DEFAULT_MAX_NESTING: Final = 256

_DQUOTE, _SQUOTE, _BACKSLASH = ord('"'), ord("'"), ord("\\")
_OPENERS = frozenset(b"{[")
_CLOSERS = frozenset(b"}]")
_QUOTES = frozenset(b"\"'")
# Outside strings: the next structural byte or lexical error.
_CONTAINER_STOP = re.compile(rb"[{}\[\]\"'\x00-\x08\x0b\x0c\x0e-\x1f\xfe\xff]")
# Inside strings: the closing quote, an escape, or a byte no JSON string may hold raw.
_DQ_STOP = re.compile(rb'["\\\x00-\x1f\xfe\xff]')
_SQ_STOP = re.compile(rb"['\\\x00-\x1f\xfe\xff]")
_NOT_WHITESPACE = re.compile(rb"[^ \t\r\n]")
_TOKEN_END = re.compile(rb"[ \t\r\n{}\[\]\"':,\x00-\x08\x0b\x0c\x0e-\x1f\xfe\xff]")
_ERROR_BYTES = frozenset(b"\xfe\xff" + bytes(range(0x20))) - frozenset(b"\t\r\n")
_KEYWORD = re.compile(r"[a-z]+")
_STRING_OR_BRACKET = re.compile(r"\"(?:[^\"\\]|\\.)*\"|[{}\[\]]", re.DOTALL)
_ANY_STRING = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'", re.DOTALL)
_ESCAPE_OR_DQUOTE = re.compile(r"\\(.)|\"", re.DOTALL)


@dataclass(frozen=True, kw_only=True, slots=True)
class ParsedMessage:
    """One decoded JSON value (any JSON type; QMP then insists on an object)."""

    value: object


@dataclass(frozen=True, kw_only=True, slots=True)
class JSONInputError:
    """Input that could not be decoded.

    Attributes:
        desc: QEMU's wording, e.g. ``JSON parse error, expecting value``.
        fatal: A limit was exceeded; answer, then close the connection.
    """

    desc: str
    fatal: bool = False


class _DuplicateKeyError(ValueError):
    pass


class _BadConstantError(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKeyError
    return result


def _reject_constant(name: str) -> object:
    raise _BadConstantError(name)


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant
)


class JSONStreamParser:
    """Incremental splitter and decoder for QMP input."""

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_nesting: int = DEFAULT_MAX_NESTING,
    ) -> None:
        """Create a parser.

        Args:
            max_message_bytes: Largest message accepted; a larger one is a fatal error.
            max_nesting: Deepest nesting of objects and arrays accepted; deeper is fatal.
        """
        self._max_message_bytes = max_message_bytes
        self._max_nesting = max_nesting
        self._buf = bytearray()
        self._pos = 0  # scan position in _buf
        self._start: int | None = None  # start of the message being scanned
        self._depth = 0
        self._quote: int | None = None  # the open string's quote byte
        self._single_quoted = False
        self._failed = False
        self._need_more = False  # the scan stopped inside a token split across reads

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a message that is not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[ParsedMessage | JSONInputError]:
        """Add received bytes; return the messages and errors they complete, in order.

        After a fatal error everything is ignored.
        """
        if self._failed:
            return []
        self._buf += data
        items: list[ParsedMessage | JSONInputError] = []
        while (item := self._next_item()) is not None:
            items.append(item)
            if isinstance(item, JSONInputError) and item.fatal:
                self._failed = True
                self._buf.clear()
                return items
        if self._start is not None and len(self._buf) - self._start > self._max_message_bytes:
            self._failed = True
            self._buf.clear()
            items.append(JSONInputError(desc="JSON token size limit exceeded", fatal=True))
            return items
        self._compact()
        return items

    def _compact(self) -> None:
        cut = self._pos if self._start is None else self._start
        if cut:
            del self._buf[:cut]
            self._pos -= cut
            if self._start is not None:
                self._start -= cut

    def _next_item(self) -> ParsedMessage | JSONInputError | None:
        """Scan on; return the next complete item, or None when more bytes are needed."""
        self._need_more = False
        while self._pos < len(self._buf) and not self._need_more:
            if self._quote is not None:
                item = self._scan_string()
            elif self._start is None:
                item = self._scan_between_messages()
            else:
                item = self._scan_container()
            if item is not None:
                return item
        return None

    def _scan_string(self) -> ParsedMessage | JSONInputError | None:
        buf, quote = self._buf, self._quote
        stop = (_DQ_STOP if quote == _DQUOTE else _SQ_STOP).search(buf, self._pos)
        if stop is None:
            self._pos = len(buf)
            return None
        at = stop.start()
        byte = buf[at]
        if byte == quote:
            self._quote = None
            self._pos = at + 1
            return self._emit() if self._depth == 0 else None
        if byte == _BACKSLASH:
            if at + 1 >= len(buf):
                self._pos = at  # rescan once the escaped byte arrives
                self._need_more = True
                return None
            self._pos = at + 2
            return None
        return self._lexical_error(at)

    def _scan_between_messages(self) -> ParsedMessage | JSONInputError | None:
        buf = self._buf
        found = _NOT_WHITESPACE.search(buf, self._pos)
        if found is None:
            self._pos = len(buf)
            return None
        at = found.start()
        byte = buf[at]
        if byte in _ERROR_BYTES:
            return self._lexical_error(at)
        self._start = at
        self._pos = at + 1
        if byte in _OPENERS:
            self._depth = 1
            return None
        if byte in _QUOTES:
            self._open_string(byte)
            return None
        if byte in _CLOSERS:
            self._start = None
            return JSONInputError(desc="JSON parse error, expecting value")
        return self._scan_bare_token(at)

    def _scan_bare_token(self, at: int) -> ParsedMessage | JSONInputError | None:
        """A top-level number or keyword: complete once a delimiter follows it."""
        end = _TOKEN_END.search(self._buf, at)
        if end is None:
            self._pos = len(self._buf)
            return None
        if end.start() == at:  # a lone ':' or ','
            self._reset(at + 1)
            return JSONInputError(desc="JSON parse error, expecting value")
        self._pos = end.start()
        return self._emit()

    def _scan_container(self) -> ParsedMessage | JSONInputError | None:
        buf = self._buf
        stop = _CONTAINER_STOP.search(buf, self._pos)
        if stop is None:
            self._pos = len(buf)
            return None
        at = stop.start()
        byte = buf[at]
        self._pos = at + 1
        if byte in _OPENERS:
            self._depth += 1
            if self._depth > self._max_nesting:
                return JSONInputError(desc="JSON nesting depth limit exceeded", fatal=True)
        elif byte in _CLOSERS:
            self._depth -= 1
            if self._depth == 0:
                return self._emit()
        elif byte in _QUOTES:
            self._open_string(byte)
        else:
            return self._lexical_error(at)
        return None

    def _open_string(self, quote: int) -> None:
        self._quote = quote
        if quote == _SQUOTE:
            self._single_quoted = True

    def _lexical_error(self, at: int) -> JSONInputError:
        """A byte no JSON token may contain: report it and reset (QEMU's resync)."""
        stray = chr(self._buf[at])
        self._reset(at + 1)
        return JSONInputError(desc=f"JSON parse error, stray '{stray}'")

    def _reset(self, pos: int) -> None:
        self._pos = pos
        self._start = None
        self._depth = 0
        self._quote = None
        self._single_quoted = False

    def _emit(self) -> ParsedMessage | JSONInputError:
        assert self._start is not None  # noqa: S101 - only called inside a message
        raw = bytes(self._buf[self._start : self._pos])
        single_quoted = self._single_quoted
        self._reset(self._pos)
        if len(raw) > self._max_message_bytes:
            return JSONInputError(desc="JSON token size limit exceeded", fatal=True)
        return decode_message(raw, single_quoted=single_quoted)


def decode_message(raw: bytes, *, single_quoted: bool = False) -> ParsedMessage | JSONInputError:
    """Decode one complete JSON message with QEMU's extensions and error wording.

    Args:
        raw: The message bytes (UTF-8).
        single_quoted: The message holds single-quoted strings (they are rewritten first).

    Returns:
        The decoded value, or the error QEMU would report.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return JSONInputError(desc="JSON parse error, invalid UTF-8 sequence in string")
    if single_quoted or "\\'" in text:
        text = _requote(text)
    try:
        return ParsedMessage(value=_DECODER.decode(text))
    except _DuplicateKeyError:
        reason = "duplicate key"
    except _BadConstantError as exc:
        reason = f"stray '{exc}'"
    except RecursionError:
        return JSONInputError(desc="JSON nesting depth limit exceeded", fatal=True)
    except json.JSONDecodeError as exc:
        reason = _describe(exc, text)
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        reason = str(exc).split(";")[0].lower()
    return JSONInputError(desc=f"JSON parse error, {reason}")


_QEMU_WORDING: Final = {
    "Expecting property name enclosed in double quotes": "key is not a string in object",
    "Expecting ':' delimiter": "missing : in object pair",
    "Invalid \\escape": "invalid escape sequence in string",
    "Invalid \\uXXXX escape": "invalid escape sequence in string",
}


def _describe(exc: json.JSONDecodeError, text: str) -> str:
    """Word a stdlib decode error the way QEMU's parser would."""
    message = exc.msg
    if message == "Expecting value":
        return f"invalid keyword '{text}'" if _KEYWORD.fullmatch(text) else "expecting value"
    if message == "Expecting ',' delimiter":
        return f"expected separator in {_innermost_container(text, exc.pos)}"
    if message == "Extra data":
        return f"stray '{text[exc.pos]}'"
    return _QEMU_WORDING.get(message) or message[:1].lower() + message[1:]


def _innermost_container(text: str, pos: int) -> str:
    """Return ``dict`` or ``list``: what encloses position ``pos`` of ``text``."""
    stack: list[str] = []
    for match in _STRING_OR_BRACKET.finditer(text, 0, pos):
        lexeme = match.group()
        if lexeme in {"{", "["}:
            stack.append(lexeme)
        elif lexeme in {"}", "]"} and stack:
            stack.pop()
    return "list" if stack and stack[-1] == "[" else "dict"


def _requote(text: str) -> str:
    r"""Rewrite QEMU's single-quoted strings and ``\\'`` escapes as standard JSON."""
    return _ANY_STRING.sub(_requote_string, text)


def _requote_string(match: re.Match[str]) -> str:
    double, single = match.group(1), match.group(2)
    body = double if double is not None else single
    return '"' + _ESCAPE_OR_DQUOTE.sub(_requote_escape, body) + '"'


def _requote_escape(match: re.Match[str]) -> str:
    escaped = match.group(1)
    if escaped is None:  # a bare double quote inside a single-quoted string
        return '\\"'
    if escaped == "'":
        return "'"
    return match.group()
