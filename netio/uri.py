"""Migration URIs and QMP addresses, parsed the way QEMU reads them.

Migration URIs (``migrate``/``migrate-incoming``, qapi/migration.json):

- ``tcp:HOST:PORT`` where HOST is an IPv4 address, a bracketed IPv6 address (``[::1]``) or a host
  name. Port 0 (let the kernel pick) and an empty host (all interfaces) only make sense when
  listening, so they are accepted only with ``listen=True``.
- ``unix:PATH`` a unix stream socket; PATH is everything after the colon.
- ``file:PATH`` or ``file:PATH,offset=N`` a migration to or from a file, starting N bytes into it.
  N is decimal or ``0x`` hex, optionally with a binary size suffix (``K``, ``M``, ``G``, ``T``),
  like QEMU's ``qemu_strtosz``.

QMP addresses (``-qmp`` in QEMU, a chardev) are ``tcp:HOST:PORT`` or ``unix:PATH``; QEMU's chardev
options ``server``, ``wait`` and ``nowait`` (``,server=on,wait=off``) are accepted and ignored,
and a doubled comma (``,,``) stands for a literal comma in a path, as in QEMU's option syntax.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from netio.errors import UriError

__all__ = [
    "FileAddress",
    "MigrationAddress",
    "SocketAddress",
    "TcpAddress",
    "UnixAddress",
    "parse_migration_uri",
    "parse_qmp_address",
]

#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_UNIX_PATH_BYTES = 107
MAX_PORT = 65535
_MAX_HOSTNAME_CHARS = 253
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_IPV4_LIKE = re.compile(r"[0-9.]+")
_OFFSET = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)([bBkKmMgGtT]?)")
_SIZE_SUFFIX_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40}
_QMP_IGNORED_OPTIONS = frozenset({"server", "wait", "nowait"})
_BOOLEAN_WORDS = frozenset({"on", "off", "yes", "no", "true", "false"})


@dataclass(frozen=True, kw_only=True, slots=True)
class TcpAddress:
    """A TCP endpoint.

    Attributes:
        host: IPv4 address, IPv6 address without brackets, or host name; ``""`` means every
            interface (listening only).
        port: TCP port; 0 lets the kernel pick one (listening only).
    """

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class UnixAddress:
    """A unix stream socket path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, kw_only=True, slots=True)
class FileAddress:
    """A file holding a migration stream, starting ``offset_bytes`` into the file."""

    path: str
    offset_bytes: int = 0

    def __str__(self) -> str:
        if self.offset_bytes:
            return f"file:{self.path},offset={self.offset_bytes}"
        return f"file:{self.path}"


SocketAddress = TcpAddress | UnixAddress
MigrationAddress = TcpAddress | UnixAddress | FileAddress


def parse_migration_uri(uri: str, *, listen: bool = False) -> MigrationAddress:
    """Parse a migration URI (``tcp:``, ``unix:`` or ``file:``).

    Args:
        uri: The URI as given to ``migrate`` or ``migrate-incoming``.
        listen: True for the incoming side, which may use port 0 and an empty host.

    Returns:
        The parsed address.

    Raises:
        UriError: The URI is malformed or uses a transport livemig does not support.
    """
    what = f"invalid migration URI {uri!r}"
    scheme, sep, rest = uri.partition(":")
    if not sep:
        raise UriError(f"{what}: expected tcp:HOST:PORT, unix:PATH or file:PATH")
    if scheme == "tcp":
        return _parse_tcp(rest, what=what, listen=listen)
    if scheme == "unix":
        return UnixAddress(path=_check_unix_path(rest, what=what))
    if scheme == "file":
        return _parse_file(rest, what=what)
    raise UriError(
        f"{what}: unsupported transport {scheme!r} (livemig supports tcp, unix and file)"
    )


def parse_qmp_address(text: str, *, listen: bool = False) -> SocketAddress:
    """Parse a QMP address (``tcp:HOST:PORT`` or ``unix:PATH``).

    QEMU's chardev options ``server``, ``wait`` and ``nowait`` may follow after commas and are
    ignored (a QMP server always listens and never waits for a client).

    Args:
        text: The address, e.g. ``unix:/run/vm.qmp,server=on,wait=off``.
        listen: True for the server side, which may use port 0 and an empty host.

    Returns:
        The parsed address.

    Raises:
        UriError: The address is malformed.
    """
    what = f"invalid QMP address {text!r}"
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in {"tcp", "unix"}:
        raise UriError(f"{what}: expected tcp:HOST:PORT or unix:PATH")
    target = _strip_chardev_options(rest, what=what)
    if scheme == "tcp":
        return _parse_tcp(target, what=what, listen=listen)
    return UnixAddress(path=_check_unix_path(target, what=what))


def split_qmp_tls(text: str) -> tuple[str, str | None]:
    """Take QEMU's chardev option ``tls-creds=ID`` off a QMP address: (address, ID or None).

    ``tcp:0.0.0.0:4444,tls-creds=tls0`` serves QMP over TLS with the credentials object
    ``tls0`` (QEMU's ``-chardev socket,...,tls-creds=tls0``).

    Raises:
        UriError: the option is given twice or empty, or on a unix: address.
    """
    parts = text.replace(",,", "\0").split(",")
    kept, creds = [parts[0]], list[str]()
    for option in parts[1:]:
        name, _, value = option.partition("=")
        if name == "tls-creds":
            creds.append(value)
        else:
            kept.append(option)
    if not creds:
        return text, None
    what = f"invalid QMP address {text!r}"
    if len(creds) > 1 or not creds[0]:
        raise UriError(f"{what}: tls-creds takes one object id")
    if not text.startswith("tcp:"):
        raise UriError(f"{what}: tls-creds is for tcp: addresses")
    return ",".join(kept).replace("\0", ",,"), creds[0].replace("\0", ",")


def _strip_chardev_options(rest: str, *, what: str) -> str:
    """Split QEMU chardev options off, check they are the tolerated ones, return the target."""
    parts = rest.replace(",,", "\0").split(",")
    target = parts[0].replace("\0", ",")
    for option in parts[1:]:
        name, sep, value = option.partition("=")
        if name not in _QMP_IGNORED_OPTIONS or (sep and value not in _BOOLEAN_WORDS):
            raise UriError(
                f"{what}: unexpected option {option.replace(chr(0), ',')!r} "
                "(only server, wait and nowait are accepted)"
            )
    return target


def _parse_tcp(rest: str, *, what: str, listen: bool) -> TcpAddress:
    """Parse ``HOST:PORT`` after ``tcp:``."""
    expected = f"{what}: expected tcp:HOST:PORT"
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0 or rest[end + 1 : end + 2] != ":":
            raise UriError(expected)
        host, port_text = rest[1:end], rest[end + 2 :]
        _check_ipv6(host, what=what)
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise UriError(expected)
        if ":" in host:
            raise UriError(f"{what}: an IPv6 address must be in brackets, e.g. tcp:[::1]:4444")
        _check_host(host, what=what, listen=listen)
    return TcpAddress(host=host, port=_parse_port(port_text, what=what, listen=listen))


def _check_ipv6(host: str, *, what: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise UriError(f"{what}: {host!r} is not an IPv6 address") from None


def _check_host(host: str, *, what: str, listen: bool) -> None:
    if not host:
        if listen:
            return
        raise UriError(f"{what}: the host is missing (expected tcp:HOST:PORT)")
    if _IPV4_LIKE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise UriError(f"{what}: {host!r} is not an IPv4 address") from None
        return
    labels = host.removesuffix(".").split(".")
    if len(host) > _MAX_HOSTNAME_CHARS or not all(_HOST_LABEL.fullmatch(x) for x in labels):
        raise UriError(f"{what}: {host!r} is not a valid host name")


def _parse_port(text: str, *, what: str, listen: bool) -> int:
    if not text.isascii() or not text.isdigit():
        raise UriError(f"{what}: port {text!r} is not a number (expected tcp:HOST:PORT)")
    port = int(text)
    if port > MAX_PORT:
        raise UriError(f"{what}: port {port} is out of range (0 to {MAX_PORT})")
    if port == 0 and not listen:
        raise UriError(f"{what}: port 0 is only valid for listening")
    return port


def _check_unix_path(path: str, *, what: str) -> str:
    if not path:
        raise UriError(f"{what}: the socket path is missing (expected unix:PATH)")
    if "\0" in path:
        raise UriError(f"{what}: the socket path contains a NUL byte")
    size_bytes = len(os.fsencode(path))
    if size_bytes > MAX_UNIX_PATH_BYTES:
        raise UriError(
            f"{what}: the socket path is {size_bytes} bytes long; "
            f"at most {MAX_UNIX_PATH_BYTES} fit in a unix socket address"
        )
    return path


def _parse_file(rest: str, *, what: str) -> FileAddress:
    path, sep, offset_text = rest.rpartition(",offset=")
    if not sep:
        path, offset_text = rest, ""
    if not path:
        raise UriError(f"{what}: the file path is missing (expected file:PATH[,offset=N])")
    if "\0" in path:
        raise UriError(f"{what}: the file path contains a NUL byte")
    offset_bytes = _parse_offset(offset_text, what=what) if sep else 0
    return FileAddress(path=path, offset_bytes=offset_bytes)


def _parse_offset(text: str, *, what: str) -> int:
    match = _OFFSET.fullmatch(text)
    if match is None:
        raise UriError(
            f"{what}: bad offset {text!r} (expected a byte count such as 4096, 0x1000 or 4K)"
        )
    number, suffix = match.groups()
    base = 16 if number[:2].lower() == "0x" else 10
    return int(number, base) << _SIZE_SUFFIX_SHIFT[suffix.lower()]
