"""netio: the asyncio glue both livemig daemons share.

- `netio.uri`: migration URIs (``tcp:``, ``unix:``, ``file:``) and QMP addresses.
- `netio.sockopts`: connecting, listening, accepting, closing; keepalive and ``TCP_USER_TIMEOUT``.
- `netio.channel` / `netio.filechannel`: drive a sans-IO connection over a socket or a file
  with scatter/gather I/O and one protocol timer.
- `netio.endpoint`: the one factory of migration channels (connect, listen/accept, files).
- `netio.qmp`: a QEMU-compatible QMP server and a small client.
- `netio.logconfig`: structlog configuration and context binding.
- `netio.lifecycle`: run a daemon on uvloop or asyncio with graceful SIGTERM/SIGINT.

netio knows neither the machine (vmsim) nor the daemons.
"""

from __future__ import annotations

from netio.authz import Authz, AuthzList, AuthzRule, AuthzSimple
from netio.channel import IOV_MAX, Channel, SansIOConnection
from netio.endpoint import (
    ChannelLike,
    ChannelListener,
    ChannelOptions,
    connect_channel,
    open_accepted,
    read_file,
)
from netio.errors import (
    ChannelClosedError,
    ChannelError,
    ConnectError,
    ListenError,
    NetIOError,
    TlsAuthzError,
    TlsCredentialsError,
    TlsError,
    TlsHandshakeError,
    UriError,
)
from netio.filechannel import FileChannel
from netio.lifecycle import LoopKind, run
from netio.logconfig import bind_context, clear_context, configure_logging
from netio.qmp import (
    Args,
    CommandRegistry,
    ErrorClass,
    QMPClient,
    QMPClientError,
    QMPCommandError,
    QMPConnectionError,
    QMPError,
    QMPEvent,
    QMPServer,
    QMPTimeoutError,
    VersionInfo,
)
from netio.sockopts import (
    accept,
    bound_address,
    close_socket,
    configure_stream_socket,
    listen,
    open_connection,
)
from netio.tls import TlsClient, TlsCredsX509, TlsServer, TlsSession
from netio.uri import (
    FileAddress,
    MigrationAddress,
    SocketAddress,
    TcpAddress,
    UnixAddress,
    parse_migration_uri,
    parse_qmp_address,
    split_qmp_tls,
)

__all__ = [
    "IOV_MAX",
    "Args",
    "Authz",
    "AuthzList",
    "AuthzRule",
    "AuthzSimple",
    "Channel",
    "ChannelClosedError",
    "ChannelError",
    "ChannelLike",
    "ChannelListener",
    "ChannelOptions",
    "CommandRegistry",
    "ConnectError",
    "ErrorClass",
    "FileAddress",
    "FileChannel",
    "ListenError",
    "LoopKind",
    "MigrationAddress",
    "NetIOError",
    "QMPClient",
    "QMPClientError",
    "QMPCommandError",
    "QMPConnectionError",
    "QMPError",
    "QMPEvent",
    "QMPServer",
    "QMPTimeoutError",
    "SansIOConnection",
    "SocketAddress",
    "TcpAddress",
    "TlsAuthzError",
    "TlsClient",
    "TlsCredentialsError",
    "TlsCredsX509",
    "TlsError",
    "TlsHandshakeError",
    "TlsServer",
    "TlsSession",
    "UnixAddress",
    "UriError",
    "VersionInfo",
    "accept",
    "bind_context",
    "bound_address",
    "clear_context",
    "close_socket",
    "configure_logging",
    "configure_stream_socket",
    "connect_channel",
    "listen",
    "open_accepted",
    "open_connection",
    "parse_migration_uri",
    "parse_qmp_address",
    "read_file",
    "run",
    "split_qmp_tls",
]
