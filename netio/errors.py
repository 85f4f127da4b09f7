"""The netio exception tree.

Every error netio raises derives from `NetIOError`, so a caller can catch the whole package at
once. Each message names what failed (the URI, the address, the channel) and why.

```
NetIOError
├── UriError             a migration URI or QMP address does not parse
├── ConnectError         a connection could not be opened (refused, timed out, unreachable)
├── ListenError          a listening socket could not be created (address in use, bad path)
├── ChannelError         a channel could not carry on
│   └── ChannelClosedError   the channel is closed, or sending failed (EPIPE, ECONNRESET)
└── TlsError             TLS could not be set up (netio.tls)
    ├── TlsCredentialsError  credentials missing or unreadable (a tls-creds-x509 directory)
    ├── TlsHandshakeError    the handshake failed: the peer's certificate, protocol or silence
    └── TlsAuthzError        the peer's certificate is valid but its name is not allowed
```

QMP errors live beside the QMP code and derive from the same root: `netio.qmp.QMPError` (a command
failed, reported to the QMP client) and `netio.qmp.QMPClientError` (our client's view of a server).
"""

from __future__ import annotations

__all__ = [
    "ChannelClosedError",
    "ChannelError",
    "ConnectError",
    "ListenError",
    "NetIOError",
    "TlsAuthzError",
    "TlsCredentialsError",
    "TlsError",
    "TlsHandshakeError",
    "UriError",
]


class NetIOError(Exception):
    """Root of every error raised by netio."""


class UriError(NetIOError, ValueError):
    """A migration URI or a QMP address is malformed.

    The message names the URI and what is wrong with it, e.g.
    ``invalid migration URI 'tcp:host': expected tcp:HOST:PORT``.
    """


class ConnectError(NetIOError):
    """A connection to an address could not be established.

    Attributes:
        address: The address as text (``tcp:127.0.0.1:4444``, ``unix:/run/x.sock``).
    """

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class ListenError(NetIOError):
    """A listening socket could not be created on an address.

    Attributes:
        address: The address as text.
    """

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class ChannelError(NetIOError):
    """A channel cannot carry on."""


class ChannelClosedError(ChannelError):
    """The channel is closed, or the socket failed while sending.

    The `OSError` that broke the channel, if any, is the exception's ``__cause__`` and is also
    kept in the channel's ``last_error``.
    """


class TlsError(NetIOError):
    """TLS could not be set up on a connection or from credentials."""


class TlsCredentialsError(TlsError):
    """A tls-creds object's files are missing or unusable; the message names the file."""


class TlsHandshakeError(TlsError):
    """The TLS handshake failed; the message names the peer and the reason.

    An untrusted, expired or misnamed certificate, a peer that does not speak TLS, or one that
    went silent.
    """


class TlsAuthzError(TlsError):
    """The peer's certificate is valid, but the authorization object denies its name."""
