"""The destination's router closes every connection it accepted when it shuts down.

A connection accepted just before the shutdown has a task that was cancelled before it ever
ran: nothing in that task can close its socket, so the router must. It leaked an accepted socket
(a ResourceWarning that failed `test_cancel_in_device_before_handover_releases_the_loaded_copy`
about one run in three: the source's ABORT notification connected as the test ended).
"""

from __future__ import annotations

import socket
import time

from migration import IncomingLedger, MigrationParameters
from netio import TcpAddress
from vmm.incoming import IncomingRouter


def test_a_connection_accepted_right_before_shutdown_is_closed(run):
    async def main() -> None:
        router = IncomingRouter(
            ledger=IncomingLedger(),
            host=None,  # type: ignore[arg-type]  # no migration gets that far
            busy_reason=lambda: None,
            params=MigrationParameters,
            clock=time.monotonic,
        )
        router.listen(TcpAddress(host="127.0.0.1", port=0))
        assert isinstance(router.address, TcpAddress)
        with socket.create_connection(("127.0.0.1", router.address.port)) as client:
            client.setblocking(False)
            server_side, _peer = router._listener._sock.accept()  # type: ignore[union-attr]
            server_side.setblocking(False)
            router._accepted.add(server_side)
            router._spawn(router._open_and_route(server_side))
            await router.close()  # before the task's first step: it never runs
            assert server_side.fileno() == -1

    run(main)
