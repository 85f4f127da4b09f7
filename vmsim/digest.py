"""The machine digest: xxh3-128 over guest RAM and a canonical encoding of all device state."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

import xxhash

if TYPE_CHECKING:
    from collections.abc import Iterable

    from vmsim.ram import GuestRam

__all__ = ["DIGEST_PREFIX", "canonical_bytes", "machine_digest"]

DIGEST_PREFIX: Final = "xxh3-128:"


def _plain(value: object) -> object:
    """Map a saved-state value to JSON: bytes become {"bytes": hex}; keys are strings."""
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def canonical_bytes(value: object) -> bytes:
    """A deterministic byte encoding of plain values (sorted keys, no whitespace)."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":")).encode()


def machine_digest(ram: GuestRam, ticks: int, devices: Iterable[object]) -> str:
    """Hash RAM in one pass, then the tick count and the device states in order."""
    hasher = xxhash.xxh3_128()
    hasher.update(ram.view)
    hasher.update(canonical_bytes({"ticks": ticks, "devices": list(devices)}))
    return DIGEST_PREFIX + hasher.hexdigest()
