"""One-line migration progress and the final summary, from `query-migrate` replies."""

from __future__ import annotations

from typing import Final

_BAR_WIDTH: Final = 24
_MIB: Final = 1024 * 1024


def _int(info: dict[str, object], key: str) -> int:
    value = info.get(key, 0)
    return value if isinstance(value, int) else 0


def _ram(info: dict[str, object]) -> dict[str, object]:
    ram = info.get("ram")
    return ram if isinstance(ram, dict) else {}


def progress_line(info: dict[str, object]) -> str:
    """`[#######.....]  58% remaining 107.4 MiB  2.81 GB/s  pass 2 ... throttle 30%  active`."""
    status = str(info.get("status", "none"))
    ram = _ram(info)
    total = _int(ram, "total")
    remaining = _int(ram, "remaining")
    if status == "completed":
        remaining = 0
    done = 1.0 - remaining / total if total else 0.0
    filled = round(done * _BAR_WIDTH)
    bar = "#" * filled + "." * (_BAR_WIDTH - filled)
    mbps = ram.get("mbps", 0.0)
    rate_gbs = float(mbps) / 8000.0 if isinstance(mbps, int | float) else 0.0
    parts = [
        f"[{bar}] {done * 100:5.1f}%",
        f"remaining {remaining / _MIB:8.1f} MiB",
        f"{rate_gbs:5.2f} GB/s",
        f"pass {_int(ram, 'dirty-sync-count')}",
        f"dirty {_int(ram, 'dirty-pages-rate')} pages/s",
    ]
    if "expected-downtime" in info:
        parts.append(f"expected downtime {_int(info, 'expected-downtime')} ms")
    throttle = throttle_text(info)
    if throttle:
        parts.append(throttle)
    parts += _encoding_texts(info, ram)
    if "postcopy-requests" in ram:
        parts.append(f"postcopy: {_int(ram, 'postcopy-requests')} page requests")
    if info.get("x-reconnecting"):
        parts.append(f"link broken: reconnecting (break {_int(info, 'x-precopy-breaks')})")
    parts.append(status)
    return "  ".join(parts)


def _encoding_texts(info: dict[str, object], ram: dict[str, object]) -> list[str]:
    """`compressed 2.41x` (multifd-compression), `xbzrle hits 83% (4.2x)` (XBZRLE's cache)."""
    texts = []
    ratio = ram.get("x-compression-ratio")
    if isinstance(ratio, int | float) and ratio:
        texts.append(f"compressed {ratio:.2f}x")
    cache = info.get("xbzrle-cache")
    if isinstance(cache, dict) and _int(cache, "pages"):
        miss = cache.get("cache-miss-rate", 0.0)
        hits = 1.0 - float(miss) if isinstance(miss, int | float) else 0.0
        encoding = cache.get("encoding-rate", 0.0)
        rate = float(encoding) if isinstance(encoding, int | float) else 0.0
        texts.append(f"xbzrle hits {hits * 100:.0f}% ({rate:.1f}x)")
    return texts


def throttle_text(info: dict[str, object]) -> str:
    """`throttle 40%` (auto-converge) or `dirty limit` while one slows the guest, else ``""``."""
    percent = _int(info, "cpu-throttle-percentage")
    if percent:
        return f"throttle {percent}%"
    if "dirty-limit-ring-full-time" in info:
        return "dirty limit"
    return ""


def summary_lines(info: dict[str, object]) -> list[str]:
    """The end-of-migration summary: outcome, times, bytes, iterations, downtime breakdown."""
    status = str(info.get("status", "none"))
    ram = _ram(info)
    lines = [f"status:        {status}"]
    if "error-desc" in info:
        lines.append(f"error:         {info['error-desc']}")
    actions = info.get("x-timeout-actions")
    if isinstance(actions, list):
        lines.extend(
            f"policy:        {action.get('policy')} expired at {action.get('at-ms')} ms: "
            f"{action.get('action')}"
            for action in actions
            if isinstance(action, dict)
        )
    if status != "completed":
        return lines
    total_ms = _int(info, "total-time")
    transferred = _int(ram, "transferred")
    lines += [
        f"total time:    {total_ms} ms (setup {_int(info, 'setup-time')} ms)",
        f"downtime:      {_int(info, 'downtime')} ms",
        (
            f"transferred:   {transferred / _MIB:.1f} MiB of {_int(ram, 'total') / _MIB:.0f} "
            f"MiB RAM (normal pages {_int(ram, 'normal')}, zero pages {_int(ram, 'duplicate')})"
        ),
        f"throughput:    {transferred / max(total_ms, 1) / 1e6:.2f} GB/s average",
        f"dirty syncs:   {_int(ram, 'dirty-sync-count')}",
    ]
    if _int(ram, "postcopy-bytes"):
        lines.append(
            f"postcopy:      {_int(ram, 'postcopy-bytes') / _MIB:.1f} MiB after the switch, "
            f"{_int(ram, 'postcopy-requests')} page requests"
        )
    if _int(info, "x-precopy-breaks"):
        lines.append(
            f"link breaks:   {_int(info, 'x-precopy-breaks')}, each resumed where it broke "
            "(x-precopy-resume-ms)"
        )
    if "x-throttle-started-at-pass" in info:
        lines.append(
            f"throttled:     from pass {_int(info, 'x-throttle-started-at-pass')}, guest work lost "
            f"{_int(info, 'x-guest-ticks-throttled')} ticks"
        )
    breakdown = info.get("x-downtime-breakdown")
    if isinstance(breakdown, dict) and breakdown:
        lines.append(
            "downtime split: " + ", ".join(f"{name} {ms} ms" for name, ms in breakdown.items())
        )
    return lines
