"""Real memory contents: `image` and `mixed` fills, their digests, and what a changed file does."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import pytest

from vmm.fill_content import MIXED_ROOTS, fill_content, resolve_fill
from vmsim import (
    MIXED_ZERO_EVERY_PAGES,
    PAGE_SIZE,
    ConfigError,
    Fill,
    Machine,
    MachineConfig,
    fill_content_digest,
    replay,
)

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np


def pages_of(machine: Machine) -> np.ndarray:
    return machine.ram.array.reshape(-1, PAGE_SIZE)


def test_an_image_file_is_laid_in_order_and_zero_padded(tmp_path: Path):
    image = tmp_path / "dump.bin"
    data = bytes(range(256)) * 40  # 10 KiB: two and a half pages
    image.write_bytes(data)
    config, content = resolve_fill({"ram_mib": 4, "fill": f"image:{image}", "workload": "idle"})
    assert Fill.IMAGE is config.fill
    assert str(image) == config.fill_source
    assert fill_content_digest(data) == config.fill_digest
    machine = Machine.boot(config, content)
    assert data == bytes(machine.ram.array[: len(data)])
    # beyond the image: zero, but for what the guest itself writes at boot (its ITS tables)
    zero = Machine.boot(MachineConfig(ram_mib=4, fill=Fill.ZERO, workload=config.workload))
    assert (machine.ram.array[len(data) :] == zero.ram.array[len(data) :]).all()


def test_a_directory_image_is_read_in_sorted_order(tmp_path: Path):
    tree = tmp_path / "tree"
    (tree / "b").mkdir(parents=True)
    (tree / "b" / "2.txt").write_bytes(b"second")
    (tree / "a.txt").write_bytes(b"first")
    (tree / "link").symlink_to(tree / "a.txt")  # not followed
    _, content = resolve_fill({"ram_mib": 4, "fill": f"image:{tree}"})
    assert b"firstsecond" == content


def test_an_image_larger_than_ram_is_cut_to_it(tmp_path: Path):
    image = tmp_path / "big.bin"
    image.write_bytes(b"\x01" * (5 << 20))
    _, content = resolve_fill({"ram_mib": 4, "fill": f"image:{image}"})
    assert content is not None
    assert 4 << 20 == len(content)


def test_a_changed_image_is_a_clear_error_not_a_silent_mismatch(tmp_path: Path):
    image = tmp_path / "dump.bin"
    image.write_bytes(b"before" * 1000)
    config, _ = resolve_fill({"ram_mib": 4, "fill": f"image:{image}", "workload": "idle"})
    saved = MachineConfig.from_dict(config.to_dict())  # as a --config file holds it
    image.write_bytes(b"after!" * 1000)
    with pytest.raises(ConfigError, match=r"the image fill's bytes \(.*dump.bin\) changed: digest"):
        replay(saved, 10, fill_content(saved))


def test_a_missing_image_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"fill image .*nothing: No such file"):
        resolve_fill({"ram_mib": 4, "fill": f"image:{tmp_path / 'nothing'}"})


def test_the_mixed_preset_has_a_quarter_zero_pages_and_compresses(tmp_path: Path):
    config, content = resolve_fill({"ram_mib": 8, "fill": "mixed", "workload": "idle"})
    assert config.fill_source is None
    machine = Machine.boot(config, content)
    pages = pages_of(machine)
    zero = ~pages.any(axis=1)
    guest_own = pages_of(Machine.boot(MachineConfig(ram_mib=8, fill=Fill.ZERO))).any(axis=1)
    preset_zero = zero | guest_own  # the guest writes its ITS tables at boot, over the fill
    assert preset_zero[MIXED_ZERO_EVERY_PAGES - 1 :: MIXED_ZERO_EVERY_PAGES].all()
    assert (
        0.24 <= zero.mean() < 0.5
    )  # the preset's zero pages (less the ITS tables), the files' own
    raw = machine.ram.array.tobytes()
    ratio = len(raw) / len(zlib.compress(raw, 1))
    assert ratio > 1.5  # real files compress; random pages would not
    again, _ = resolve_fill({"ram_mib": 8, "fill": "mixed", "workload": "idle"})
    assert config.fill_digest == again.fill_digest  # the same files, the same bytes


def test_a_machine_with_content_fill_replays_deterministically(tmp_path: Path):
    config, content = resolve_fill({"ram_mib": 4, "fill": "mixed", "workload": "random",
                                    "dirty_rate": 5000})  # fmt: skip
    assert replay(config, 500, content) == replay(config, 500, fill_content(config))


def test_content_fills_are_checked_in_the_configuration():
    with pytest.raises(ConfigError, match="fill_digest: a mixed fill needs"):
        MachineConfig(fill=Fill.MIXED)
    with pytest.raises(ConfigError, match="fill_source: an image fill needs"):
        MachineConfig(fill=Fill.IMAGE, fill_digest="0" * 32)
    with pytest.raises(ConfigError, match="are for image and mixed fills"):
        MachineConfig(fill=Fill.RANDOM, fill_digest="0" * 32)
    with pytest.raises(ConfigError, match="needs its bytes"):
        Machine.boot(MachineConfig(ram_mib=4, fill=Fill.MIXED, fill_digest="0" * 32))


def test_the_mixed_roots_are_debian_system_directories():
    assert all(root.startswith("/usr/") for root in MIXED_ROOTS)
