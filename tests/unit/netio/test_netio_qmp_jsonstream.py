"""QMP input framing and decoding (netio/qmp/jsonstream.py), QEMU's wording."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netio.qmp.jsonstream import JSONInputError, JSONStreamParser, ParsedMessage, decode_message


def values(items):
    return [item.value if isinstance(item, ParsedMessage) else item for item in items]


def test_concatenated_objects_without_newlines_are_separate_messages():
    parser = JSONStreamParser()

    assert [{"execute": "a"}, {"execute": "b"}] == values(
        parser.feed(b'{"execute":"a"}{"execute":"b"}')
    )


def test_a_message_may_span_many_reads():
    parser = JSONStreamParser()

    assert [] == parser.feed(b'{"execute": "qmp_cap')
    assert [] == parser.feed(b'abilities", "arguments": {"x": [1, {"y": "}')
    assert [{"execute": "qmp_capabilities", "arguments": {"x": [1, {"y": "}]"}]}}] == values(
        parser.feed(b']"}]}}\r\n')
    )
    assert 0 == parser.buffered_bytes


def test_braces_and_quotes_inside_strings_do_not_count():
    parser = JSONStreamParser()

    message = {"execute": "x", "arguments": {"s": "{[\\\"'", "t": "}}]]"}}
    assert [message] == values(parser.feed(json.dumps(message).encode()))


def test_escaped_quote_split_across_reads():
    parser = JSONStreamParser()

    assert [] == parser.feed(b'{"a": "x\\')
    assert [{"a": 'x"y'}] == values(parser.feed(b'"y"}'))


def test_single_quoted_strings_and_escaped_apostrophes_are_accepted():
    parser = JSONStreamParser()

    assert [{"execute": "it's", "arguments": {"q": 'say "hi"', "r": "a'b"}}] == values(
        parser.feed(b"{'execute': 'it\\'s', 'arguments': {'q': 'say \"hi\"', \"r\": \"a\\'b\"}}")
    )


@pytest.mark.parametrize(
    ("raw", "desc"),
    [
        (b'{ "execute": }', "JSON parse error, expecting value"),
        (b'{"execute" "x"}', "JSON parse error, missing : in object pair"),
        (b'{"execute": "x" "id": 1}', "JSON parse error, expected separator in dict"),
        (b'{"a": [1 2]}', "JSON parse error, expected separator in list"),
        (b"{execute: 1}", "JSON parse error, key is not a string in object"),
        (b'{"a": "\\q"}', "JSON parse error, invalid escape sequence in string"),
        (b'{"a": 1, "a": 2}', "JSON parse error, duplicate key"),
        (b'{"a": NaN}', "JSON parse error, stray 'NaN'"),
        (b'{"a": "\xff\xfe"}', "JSON parse error, stray '\xff'"),
        (b'{"a": "\xc3\x28"}', "JSON parse error, invalid UTF-8 sequence in string"),
        (b"}", "JSON parse error, expecting value"),
        (b"nope ", "JSON parse error, invalid keyword 'nope'"),
        (b": ", "JSON parse error, expecting value"),
    ],
)
def test_malformed_input_is_worded_like_qemu(raw, desc):
    parser = JSONStreamParser()

    assert [JSONInputError(desc=desc)] == parser.feed(raw)[:1]


def test_an_integer_with_too_many_digits_is_a_parse_error():
    parser = JSONStreamParser()

    [item] = parser.feed(b'{"a": ' + b"9" * 5000 + b"}")

    assert isinstance(item, JSONInputError)
    assert item.desc.startswith("JSON parse error, exceeds the limit")
    assert not item.fatal


def test_top_level_scalars_are_messages_too():
    parser = JSONStreamParser()

    assert [[1], 42, "s", True] == values(parser.feed(b'[1] 42 "s" true\n'))


def test_a_control_character_resets_the_parser():
    """The spec's resynchronisation: a lexical error discards the partial message."""
    parser = JSONStreamParser()

    items = parser.feed(b'{"execute": "bro\x01{"execute": "ok"}')

    assert [JSONInputError(desc="JSON parse error, stray '\x01'"), {"execute": "ok"}] == values(
        items
    )


def test_whitespace_between_messages_is_ignored():
    parser = JSONStreamParser()

    assert [{}, {}] == values(parser.feed(b" \r\n\t{}\n\n  {}  \r\n"))


def test_message_beyond_the_size_limit_is_fatal_and_ends_parsing():
    parser = JSONStreamParser(max_message_bytes=1000)

    items = parser.feed(b'{"execute": "' + b"x" * 2000)

    assert [JSONInputError(desc="JSON token size limit exceeded", fatal=True)] == items
    assert [] == parser.feed(b'"}{"execute": "x"}')


def test_complete_message_beyond_the_size_limit_is_fatal():
    parser = JSONStreamParser(max_message_bytes=100)

    items = parser.feed(b'{"ok": 1}{"execute": "' + b"x" * 200 + b'"}')

    assert [{"ok": 1}, JSONInputError(desc="JSON token size limit exceeded", fatal=True)] == (
        values(items)
    )


def test_nesting_beyond_the_limit_is_fatal():
    parser = JSONStreamParser(max_nesting=10)

    items = parser.feed(b"[" * 11)

    assert [JSONInputError(desc="JSON nesting depth limit exceeded", fatal=True)] == items


def test_nesting_at_the_limit_is_fine():
    parser = JSONStreamParser(max_nesting=10)

    assert [[[[[[[[[[[]]]]]]]]]]] == values(parser.feed(b"[" * 10 + b"]" * 10))


def test_decode_message_directly():
    assert ParsedMessage(value={"a": [1.5, None]}) == decode_message(b'{"a": [1.5, null]}')


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
_messages = st.lists(st.dictionaries(st.text(max_size=6), _json_values, max_size=4), max_size=5)


@given(messages=_messages, data=st.data())
def test_any_split_of_a_stream_yields_the_same_messages(messages, data):
    stream = b"".join(json.dumps(m).encode() + b" " * (i % 2) for i, m in enumerate(messages))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = JSONStreamParser()
    received = []
    start = 0
    for cut in [*cuts, len(stream)]:
        received += values(parser.feed(stream[start:cut]))
        start = cut

    assert messages == received


@given(messages=_messages)
def test_byte_at_a_time(messages):
    stream = b"".join(json.dumps(m, ensure_ascii=False).encode() for m in messages)
    parser = JSONStreamParser()
    received = []
    for index in range(len(stream)):
        received += values(parser.feed(stream[index : index + 1]))

    assert messages == received


@given(garbage=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(garbage):
    parser = JSONStreamParser(max_message_bytes=150, max_nesting=8)

    for item in parser.feed(garbage):
        assert isinstance(item, ParsedMessage | JSONInputError)
