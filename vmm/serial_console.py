"""The guest's serial port: appended to a file (`--serial`) and logged a line at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import structlog

if TYPE_CHECKING:
    from pathlib import Path

SERIAL_LINE_BYTES: Final = 80  # guest serial output is logged a line (or this much) at a time

log = structlog.get_logger("vmm.daemon")


class SerialConsole:
    """Where the guest's serial output goes; `path` None: only the log."""

    def __init__(self, path: Path | None) -> None:
        self._file = path.open("ab") if path is not None else None
        self._line = bytearray()

    def write(self, output: bytes) -> None:
        """Take what the guest printed (on the event loop's thread)."""
        if self._file is not None:
            self._file.write(output)
            self._file.flush()
        self._line.extend(output)
        while b"\n" in self._line or len(self._line) >= SERIAL_LINE_BYTES:
            cut = self._line.find(b"\n")
            cut = cut if cut >= 0 else SERIAL_LINE_BYTES
            line = bytes(self._line[:cut])
            del self._line[: cut + 1 if cut < len(self._line) else cut]
            log.debug("serial", text=line.decode("latin-1"))

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
