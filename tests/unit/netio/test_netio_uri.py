"""Migration URIs and QMP addresses (netio/uri.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netio import (
    FileAddress,
    NetIOError,
    TcpAddress,
    UnixAddress,
    UriError,
    parse_migration_uri,
    parse_qmp_address,
)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("tcp:127.0.0.1:4444", TcpAddress(host="127.0.0.1", port=4444)),
        ("tcp:[::1]:4444", TcpAddress(host="::1", port=4444)),
        ("tcp:[fe80::1%eth0]:1", TcpAddress(host="fe80::1%eth0", port=1)),
        ("tcp:localhost:65535", TcpAddress(host="localhost", port=65535)),
        ("tcp:dest-1.example.org:80", TcpAddress(host="dest-1.example.org", port=80)),
        ("unix:/run/livemig/dst.sock", UnixAddress(path="/run/livemig/dst.sock")),
        ("unix:relative,with,commas", UnixAddress(path="relative,with,commas")),
        ("file:/var/tmp/vm.mig", FileAddress(path="/var/tmp/vm.mig")),
        ("file:/x,offset=4096", FileAddress(path="/x", offset_bytes=4096)),
        ("file:/x,offset=0x1000", FileAddress(path="/x", offset_bytes=4096)),
        ("file:/x,offset=4K", FileAddress(path="/x", offset_bytes=4096)),
        ("file:/x,offset=2m", FileAddress(path="/x", offset_bytes=2 << 20)),
        ("file:/x,offset=010", FileAddress(path="/x", offset_bytes=10)),
        ("file:/a,b,offset=1", FileAddress(path="/a,b", offset_bytes=1)),
    ],
)
def test_parse_migration_uri(uri, expected):
    assert expected == parse_migration_uri(uri)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("tcp:127.0.0.1:0", TcpAddress(host="127.0.0.1", port=0)),
        ("tcp::4444", TcpAddress(host="", port=4444)),
    ],
)
def test_listening_allows_port_zero_and_any_host(uri, expected):
    assert expected == parse_migration_uri(uri, listen=True)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("tcp:host", "invalid migration URI 'tcp:host': expected tcp:HOST:PORT"),
        ("tcp:[::1]4444", "invalid migration URI 'tcp:[::1]4444': expected tcp:HOST:PORT"),
        ("tcp:[::1:4444", "invalid migration URI 'tcp:[::1:4444': expected tcp:HOST:PORT"),
        ("tcp:::1:4444", "an IPv6 address must be in brackets, e.g. tcp:[::1]:4444"),
        ("tcp:[zz::1]:1", "'zz::1' is not an IPv6 address"),
        ("tcp:1.2.3.999:1", "'1.2.3.999' is not an IPv4 address"),
        ("tcp:bad_host:1", "'bad_host' is not a valid host name"),
        ("tcp:-bad:1", "'-bad' is not a valid host name"),
        ("tcp:127.0.0.1:http", "port 'http' is not a number (expected tcp:HOST:PORT)"),
        ("tcp:127.0.0.1:", "port '' is not a number"),
        ("tcp:127.0.0.1:65536", "port 65536 is out of range (0 to 65535)"),
        ("tcp:127.0.0.1:0", "port 0 is only valid for listening"),
        ("tcp::4444", "the host is missing (expected tcp:HOST:PORT)"),
        ("unix:", "the socket path is missing (expected unix:PATH)"),
        ("unix:/" + "x" * 107, "the socket path is 108 bytes long; at most 107 fit"),
        ("unix:/a\0b", "the socket path contains a NUL byte"),
        ("file:", "the file path is missing (expected file:PATH[,offset=N])"),
        ("file:,offset=1", "the file path is missing"),
        ("file:/x,offset=abc", "bad offset 'abc' (expected a byte count such as 4096"),
        ("file:/x,offset=-1", "bad offset '-1'"),
        ("exec:cat > /tmp/x", "unsupported transport 'exec' (livemig supports tcp, unix and file)"),
        ("fd:3", "unsupported transport 'fd'"),
        ("127.0.0.1:4444", "unsupported transport '127.0.0.1'"),
        ("nothing", "expected tcp:HOST:PORT, unix:PATH or file:PATH"),
    ],
)
def test_bad_migration_uri_names_the_uri_and_the_problem(uri, message):
    with pytest.raises(UriError) as caught:
        parse_migration_uri(uri)

    assert str(caught.value).startswith(f"invalid migration URI {uri!r}: ")
    assert message in str(caught.value)


def test_uri_error_is_a_netio_error_and_a_value_error():
    assert issubclass(UriError, NetIOError)
    assert issubclass(UriError, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:127.0.0.1:4445", TcpAddress(host="127.0.0.1", port=4445)),
        ("tcp:127.0.0.1:4445,server=on,wait=off", TcpAddress(host="127.0.0.1", port=4445)),
        ("unix:/run/vm.qmp,server,nowait", UnixAddress(path="/run/vm.qmp")),
        ("unix:/run/vm.qmp,server=on,wait=off", UnixAddress(path="/run/vm.qmp")),
        ("unix:/run/a,,b.qmp,server=on", UnixAddress(path="/run/a,b.qmp")),
    ],
)
def test_parse_qmp_address_tolerates_chardev_options(text, expected):
    assert expected == parse_qmp_address(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file:/x", "invalid QMP address 'file:/x': expected tcp:HOST:PORT or unix:PATH"),
        ("/run/vm.qmp", "expected tcp:HOST:PORT or unix:PATH"),
        ("unix:/x,telnet=on", "unexpected option 'telnet=on' (only server, wait and nowait"),
        ("unix:/x,server=maybe", "unexpected option 'server=maybe'"),
        ("tcp:127.0.0.1:0", "port 0 is only valid for listening"),
    ],
)
def test_bad_qmp_address(text, message):
    with pytest.raises(UriError, match="invalid QMP address") as caught:
        parse_qmp_address(text)

    assert message in str(caught.value)


def test_qmp_listen_address_may_use_port_zero():
    assert TcpAddress(host="127.0.0.1", port=0) == parse_qmp_address("tcp:127.0.0.1:0", listen=True)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (TcpAddress(host="127.0.0.1", port=1), "tcp:127.0.0.1:1"),
        (TcpAddress(host="::1", port=2), "tcp:[::1]:2"),
        (UnixAddress(path="/s"), "unix:/s"),
        (FileAddress(path="/f"), "file:/f"),
        (FileAddress(path="/f", offset_bytes=9), "file:/f,offset=9"),
    ],
)
def test_addresses_print_as_uris(address, text):
    assert text == str(address)


_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True),
)
_paths = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=25
)


@given(host=_hosts, port=st.integers(1, 65535))
def test_tcp_uri_round_trips(host, port):
    address = TcpAddress(host=host, port=port)

    assert address == parse_migration_uri(str(address))


@given(path=_paths)
def test_unix_uri_round_trips(path):
    address = UnixAddress(path=path)

    assert address == parse_migration_uri(str(address))


@given(path=_paths.filter(lambda p: ",offset=" not in p), offset=st.integers(0, 2**62))
def test_file_uri_round_trips(path, offset):
    address = FileAddress(path=path, offset_bytes=offset)

    assert address == parse_migration_uri(str(address))
