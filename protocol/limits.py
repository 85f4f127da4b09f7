"""Bounds on what a peer can make us allocate or loop over, and liveness timeouts."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Hostile-input limits (docs/protocol.md section 3). Each is tested at its edge.

    Attributes:
        max_meta_bytes: msgpack metadata bytes per frame (checked at the frame header).
        max_data_bytes: raw data bytes per frame (checked at the frame header).
        max_runs: records in one RAM run table, the EOS record included.
        max_str_len: msgpack str length.
        max_bin_len: msgpack bin length.
        max_array_len: msgpack array length.
        max_map_len: msgpack map length.
        max_ext_len: msgpack ext length (ext types are refused anyway; this bounds the read).
        max_depth: nesting depth of msgpack containers in a frame's metadata (the top map is 1).
        max_buffered_bytes: bytes held by ``receive_data`` while an event waits to be taken.
        max_config_devices: entries in the configuration's device list.
        max_ram_bytes: guest RAM size a configuration may announce.
    """

    max_meta_bytes: int = MIB
    max_data_bytes: int = 16 * MIB
    max_runs: int = 8192
    max_str_len: int = 64 * 1024
    max_bin_len: int = MIB
    max_array_len: int = 65536
    max_map_len: int = 65536
    max_ext_len: int = 0
    max_depth: int = 32
    max_buffered_bytes: int = 16 * MIB
    max_config_devices: int = 1024
    max_ram_bytes: int = 64 * 1024 * MIB


@dataclass(frozen=True, kw_only=True, slots=True)
class Timeouts:
    """Liveness (docs/protocol.md section 4).

    Attributes:
        ping_interval_s: the source sends PING this often once the return path is open.
        peer_timeout_s: the peer is declared dead after this long with nothing received and no
            send progress.
    """

    ping_interval_s: float = 1.0
    peer_timeout_s: float = 10.0
