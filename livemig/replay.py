"""`livemig replay`: the digest a VM must have after N ticks, computed without any daemon."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from vmm.fill_content import fill_content
from vmsim import MachineConfig, replay

if TYPE_CHECKING:
    from pathlib import Path


def replay_digest(config: MachineConfig, ticks: int) -> dict[str, object]:
    """Boot, run `ticks` ticks, stop, digest: the oracle every migration test compares with.

    An `image` or `mixed` fill's bytes are read again; if they changed since the configuration
    was made, the boot refuses with both digests (`ConfigError`).
    """
    return {"ticks": ticks, "digest": replay(config, ticks, fill_content(config))}


def load_config(path: Path) -> MachineConfig:
    """A VM configuration file: the `config` member of `x-query-vm`, or a whole reply."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    return MachineConfig.from_dict(data)
