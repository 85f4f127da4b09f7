"""Wire codes of the livemig protocol (docs/protocol.md): magics, versions, kinds and commands."""

from __future__ import annotations

import enum
from typing import Final

MAIN_MAGIC: Final = b"LVMG"
"""Magic of the main stream (source to destination)."""

RETURN_MAGIC: Final = b"LVRP"
"""Magic of the return path (destination to source)."""

PROTOCOL_VERSION: Final = 3
"""The current protocol version: every network connection opens with a CHANNEL handshake."""

PREVIOUS_VERSION: Final = 2
"""The previous protocol version: xxh3-64 frame checksums, no channel handshake."""

CRC32_VERSION: Final = 1
"""The first protocol version: CRC-32 frame checksums, otherwise as version 2."""

CHANNEL_HANDSHAKE_VERSION: Final = 3
"""From this version on, a network connection's first frame is CHANNEL (docs/protocol.md 1.6)."""

SUPPORTED_VERSIONS: Final = (CRC32_VERSION, PREVIOUS_VERSION, PROTOCOL_VERSION)
"""Versions a receiver accepts, oldest first."""

CHECKSUM_NONE: Final = "none"
"""CHANNEL's optional `checksum`: later frames carry checksum 0 (a TLS channel, docs 1.6)."""

STREAM_HEADER_BYTES: Final = 8
FRAME_HEADER_BYTES: Final = 16
FRAME_FOOTER_BYTES: Final = 16
FOOTER_MARKER: Final = 0x7E
RUN_RECORD_BYTES: Final = 8


class FrameKind(enum.IntEnum):
    """Kinds of main-stream frames (QEMU's section type bytes)."""

    EOF = 0x00
    SECTION_START = 0x01
    SECTION_PART = 0x02
    SECTION_END = 0x03
    SECTION_FULL = 0x04
    VMDESCRIPTION = 0x06
    CONFIGURATION = 0x07
    COMMAND = 0x08
    PAGES = 0x09  # a multifd channel's packet of pages (not a section)


class ReturnKind(enum.IntEnum):
    """Kinds of return-path frames (QEMU's ``MIG_RP_MSG_*`` in spirit)."""

    OPEN_ACK = 0x01
    PONG = 0x02
    REQ_PAGES = 0x03
    RECV_BITMAP = 0x05
    LOADED = 0x10
    RESUMED = 0x11
    FAILED = 0x12
    OUTCOME = 0x13
    RESUME_POINT = 0x14  # livemig: precopy resume (docs/protocol.md 1.11)


class Command(enum.IntEnum):
    """Values of ``cmd`` in COMMAND frames (after QEMU's ``enum qemu_vm_cmd``)."""

    OPEN_RETURN_PATH = 1
    PING = 2
    POSTCOPY_ADVISE = 3
    POSTCOPY_LISTEN = 4
    POSTCOPY_RUN = 5
    POSTCOPY_RAM_DISCARD = 6
    POSTCOPY_RESUME = 9
    SWITCHOVER_START = 11
    HANDOVER = 0x40
    ABORT = 0x41
    RESOLVE = 0x42
    CHANNEL = 0x43
    MULTIFD_SYNC = 0x44
    PRECOPY_RESUME = 0x45  # livemig: precopy resume (docs/protocol.md 1.11)


class ChannelRole(enum.StrEnum):
    """What a network connection carries for its migration, named in its CHANNEL handshake.

    ``main`` carries the main stream and, in the other direction, the return path; ``resolve``
    asks what became of a migration (docs/handover.md); ``multifd`` (index 0..254) carries
    packets of pages (PAGES) and a MULTIFD_SYNC per pass, then EOF; ``recover`` takes a paused
    migration up again: a postcopy (docs/protocol.md 1.10) or a precopy whose connection broke
    (1.11); ``preempt`` carries the pages a postcopy destination asked for, ahead of the
    background push on ``main`` (1.10, QEMU's postcopy-preempt channel).
    """

    MAIN = "main"
    RESOLVE = "resolve"
    MULTIFD = "multifd"
    RECOVER = "recover"
    PREEMPT = "preempt"


MAX_MULTIFD_CHANNELS: Final = 255
"""QEMU's upper bound of `multifd-channels`; a multifd channel's index is below it."""


class PageKind(enum.IntEnum):
    """Kinds of records in a RAM run table."""

    NORMAL = 1
    ZERO = 2
    XBZRLE = 3
    COMPRESSED = 4
    EOS = 0x10


class Outcome(enum.StrEnum):
    """What became of a migration, as reported in OUTCOME."""

    COMMITTED = "committed"
    IN_DOUBT = "in-doubt"
    DISCARDED = "discarded"
    UNKNOWN = "unknown"
