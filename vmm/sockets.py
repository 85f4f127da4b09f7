"""TCP settings every migration socket gets, derived from the migration parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from netio import configure_stream_socket

if TYPE_CHECKING:
    import socket

    from vmm.params import MigrationParameters


def tune_migration_socket(
    sock: socket.socket, params: MigrationParameters, *, keepalive_idle_s: int | None = None
) -> None:
    """Keepalives and TCP_USER_TIMEOUT from `x-peer-timeout-ms`: a silent peer never hangs us.

    Args:
        sock: a connected or accepted TCP socket.
        params: the migration's parameters.
        keepalive_idle_s: seconds of silence before the first probe; by default half the peer
            timeout (at least one second).
    """
    configure_stream_socket(
        sock,
        keepalive_idle_s=keepalive_idle_s or max(1, params.peer_timeout_ms // 2000),
        keepalive_interval_s=1,
        keepalive_count=3,
        user_timeout_ms=params.peer_timeout_ms,
    )
