"""The exception tree, FrameInfo and the fixed binary parts."""

from __future__ import annotations

import pytest

from protocol import (
    ErrorCode,
    FrameInfo,
    FrameKind,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from protocol.frames import (
    check_footer,
    decode_stream_header,
    encode_footer,
    encode_frame_header,
    encode_stream_header,
)

INFO = FrameInfo(
    index=3, offset=99, kind=FrameKind.SECTION_PART, section_id=2, meta_len=5, data_len=0
)


def test_abstract_root_and_subclasses():
    with pytest.raises(TypeError):
        ProtocolError("x", code=ErrorCode.INTERNAL)
    for cls in (LocalProtocolError, RemoteProtocolError):
        error = cls("broken", code=ErrorCode.BUSY)
        assert isinstance(error, ProtocolError)
        assert (ErrorCode.BUSY, None, None) == (error.code, error.frame, error.idstr)


def test_message_names_the_frame():
    error = LocalProtocolError("bad thing", code=ErrorCode.CHECKSUM_MISMATCH).located(INFO, "ram")
    remote = RemoteProtocolError.from_local(error)

    expected = "CHECKSUM_MISMATCH: bad thing [frame 3 (SECTION_PART, section 2 'ram') at offset 99]"
    assert expected == str(error) == str(remote)
    assert (INFO, "ram") == (remote.frame, remote.idstr)


def test_located_keeps_what_is_known():
    other = FrameInfo(index=9, offset=1, kind=1, section_id=0, meta_len=0, data_len=0)
    error = LocalProtocolError("x").located(INFO, "a").located(other, "b")
    assert (INFO, "a") == (error.frame, error.idstr)


def test_kind_names():
    assert (
        "kind 0x55"
        == FrameInfo(index=0, offset=8, kind=0x55, section_id=0, meta_len=0, data_len=0).kind_name
    )
    assert (
        "unknown kind"
        == FrameInfo(index=0, offset=8, kind=-1, section_id=0, meta_len=0, data_len=0).kind_name
    )


def test_fixed_parts_are_big_endian():
    assert b"LVMG\x00\x02\x00\x00" == encode_stream_header(b"LVMG", 2)
    assert bytes.fromhex("02000000000000070000001000000020") == encode_frame_header(2, 7, 16, 32)
    assert bytes.fromhex("7e000000000000070102030405060708") == encode_footer(7, 0x0102030405060708)
    assert 1 == decode_stream_header(b"LVMG\x00\x01\x00\x00", b"LVMG")


@pytest.mark.parametrize(
    ("footer", "code"),
    [
        (bytes.fromhex("7f000000000000070000000000000001"), ErrorCode.MISSING_FOOTER),
        (bytes.fromhex("7e000100000000070000000000000001"), ErrorCode.MISSING_FOOTER),
        (bytes.fromhex("7e000000000000080000000000000001"), ErrorCode.MISSING_FOOTER),
        (bytes.fromhex("7e000000000000070000000000000002"), ErrorCode.CHECKSUM_MISMATCH),
    ],
)
def test_footer_checks(footer, code):
    with pytest.raises(LocalProtocolError) as info:
        check_footer(footer, 7, 1)
    assert code == info.value.code
