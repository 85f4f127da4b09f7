"""QMP (QEMU Machine Protocol): a server QEMU's tools can drive, and a small client.

See `netio.qmp.server` for the wire behaviour and `netio.qmp.commands` for writing commands.
"""

from __future__ import annotations

from netio.qmp.client import (
    QMPClient,
    QMPClientError,
    QMPCommandError,
    QMPConnectionError,
    QMPEvent,
    QMPTimeoutError,
)
from netio.qmp.commands import Args, CommandRegistry, ErrorClass, Handler, QMPError
from netio.qmp.server import QMPServer, VersionInfo

__all__ = [
    "Args",
    "CommandRegistry",
    "ErrorClass",
    "Handler",
    "QMPClient",
    "QMPClientError",
    "QMPCommandError",
    "QMPConnectionError",
    "QMPError",
    "QMPEvent",
    "QMPServer",
    "QMPTimeoutError",
    "VersionInfo",
]
