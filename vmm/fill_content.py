"""Real bytes for guest RAM: the `image` and `mixed` fills (vmsim does no I/O; this module does).

- ``--fill image:PATH``: a file (a raw memory dump such as QEMU's ``dump-guest-memory``
  output works) or a directory tree read in order (sorted names, regular files, symlinks not
  followed), cut to the RAM size or zero-padded to it.
- ``--fill mixed``: the preset for "what would compression do to a real guest": the files under
  MIXED_ROOTS (binaries, libraries, text: what every Debian machine has), read in the same
  order and repeated as needed, in three pages of every four; the fourth is a zero page
  (`vmsim.fill.MIXED_ZERO_EVERY_PAGES`: 25 % zero pages).

The configuration carries the bytes' xxh3-128 digest (`fill_digest`), so `livemig replay` and
every test that replays the machine read the same bytes again, or stop with a clear error if
a file changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from vmsim import ConfigError, Fill, MachineConfig, content_bytes_wanted, fill_content_digest

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

MIXED_ROOTS: Final = ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/share")
IMAGE_PREFIX: Final = "image:"
_READ_CHUNK_BYTES: Final = 8 << 20


def fill_content(config: MachineConfig) -> bytes | None:
    """The bytes an `image` or `mixed` fill lays into RAM (None for the other fills).

    Raises:
        ConfigError: the image cannot be read, or holds no bytes.
    """
    wanted = content_bytes_wanted(config.fill, config.n_pages)
    if config.fill is Fill.IMAGE:
        return _read_image(Path(str(config.fill_source)), wanted)
    if config.fill is Fill.MIXED:
        return _repeated(_read_trees([Path(root) for root in MIXED_ROOTS], wanted), wanted)
    return None


def resolve_fill(values: Mapping[str, object]) -> tuple[MachineConfig, bytes | None]:
    """A configuration from plain values where `fill` may be ``image:PATH``, with its content.

    The fill's digest is computed from the bytes read now, unless the values name one (a
    saved configuration), which the bytes must then match when the machine boots.

    Raises:
        ConfigError: the values are invalid, or the image cannot be read.
    """
    values = dict(values)
    fill = values.get("fill")
    if isinstance(fill, str) and fill.startswith(IMAGE_PREFIX):
        source = fill.removeprefix(IMAGE_PREFIX)
        if not source:
            raise ConfigError("fill: expected image:PATH")
        values["fill"], values["fill_source"] = str(Fill.IMAGE), str(Path(source).absolute())
        values.pop("fill_digest", None)
    if values.get("fill") in (Fill.IMAGE, Fill.MIXED) and not values.get("fill_digest"):
        probe = MachineConfig.from_dict({**values, "fill_digest": "0" * 32})
        content = fill_content(probe)
        values["fill_digest"] = fill_content_digest(content or b"")
        return MachineConfig.from_dict(values), content
    config = MachineConfig.from_dict(values)
    return config, fill_content(config)


def _read_image(path: Path, wanted: int) -> bytes:
    try:
        content = _read_trees([path], wanted) if path.is_dir() else _read_file(path, wanted)
    except OSError as exc:
        msg = f"fill image {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    if not content:
        msg = f"fill image {path} holds no bytes"
        raise ConfigError(msg)
    return content


def _read_file(path: Path, limit_bytes: int) -> bytes:
    with path.open("rb") as source:
        return source.read(limit_bytes)


def _read_trees(roots: list[Path], limit_bytes: int) -> bytes:
    """Regular files under `roots`, in sorted order, concatenated up to `limit_bytes`."""
    out = bytearray()
    for path in _files(roots):
        try:
            with path.open("rb") as source:
                while len(out) < limit_bytes:
                    chunk = source.read(min(_READ_CHUNK_BYTES, limit_bytes - len(out)))
                    if not chunk:
                        break
                    out += chunk
        except OSError:
            continue  # unreadable here: the digest still pins what was read
        if len(out) >= limit_bytes:
            break
    return bytes(out)


def _files(roots: list[Path]) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
            continue
        for directory, subdirectories, names in os.walk(root):
            subdirectories.sort()
            for name in sorted(names):
                path = Path(directory, name)
                if path.is_file() and not path.is_symlink():
                    yield path


def _repeated(data: bytes, wanted: int) -> bytes:
    if not data:
        msg = f"the mixed fill found no files under {', '.join(MIXED_ROOTS)}"
        raise ConfigError(msg)
    copies = -(-wanted // len(data))
    return (data * copies)[:wanted]
