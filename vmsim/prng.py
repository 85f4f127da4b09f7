"""Counter-based pseudo-random numbers: splitmix64 of (key, counter), scalar and vectorised.

A counter-based generator can be evaluated at any counter value in any order, so a run of N
ticks can be computed in one vectorised step or in N small ones and yield the same numbers.
numpy's and Python's generators cannot be sliced like that and their streams are not promised
to stay stable across versions; splitmix64 is fixed arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["GOLDEN_GAMMA", "U64_MASK", "draw", "draws", "mix64", "mix64_array", "stream_key"]

U64_MASK: Final = (1 << 64) - 1
GOLDEN_GAMMA: Final = 0x9E3779B97F4A7C15
_MUL1: Final = 0xBF58476D1CE4E5B9
_MUL2: Final = 0x94D049BB133111EB

_GAMMA_U64: Final = np.uint64(GOLDEN_GAMMA)
_MUL1_U64: Final = np.uint64(_MUL1)
_MUL2_U64: Final = np.uint64(_MUL2)
_S30: Final = np.uint64(30)
_S27: Final = np.uint64(27)
_S31: Final = np.uint64(31)


def mix64(value: int) -> int:
    """Return splitmix64's finaliser of a u64 (a bijection with good avalanche)."""
    z = value & U64_MASK
    z = ((z ^ (z >> 30)) * _MUL1) & U64_MASK
    z = ((z ^ (z >> 27)) * _MUL2) & U64_MASK
    return z ^ (z >> 31)


def mix64_array(values: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Vectorised `mix64`; u64 arithmetic wraps as in the scalar version."""
    z = values ^ (values >> _S30)
    z *= _MUL1_U64
    z ^= z >> _S27
    z *= _MUL2_U64
    z ^= z >> _S31
    return z


def stream_key(*parts: int) -> int:
    """Derive the key of one stream, e.g. `stream_key(seed, vcpu, lane)`."""
    key = 0
    for part in parts:
        key = mix64((key ^ (part & U64_MASK)) + GOLDEN_GAMMA)
    return key


def draw(key: int, counter: int) -> int:
    """Return the number at `counter` of the stream `key` (splitmix64's output sequence)."""
    return mix64(key + (counter + 1) * GOLDEN_GAMMA)


def draws(key: int, first_counter: int, count: int) -> NDArray[np.uint64]:
    """Return `draw(key, c)` for c in first_counter .. first_counter + count - 1, vectorised."""
    counters = np.arange(count, dtype=np.uint64)
    counters += np.uint64((first_counter + 1) & U64_MASK)
    counters *= _GAMMA_U64
    counters += np.uint64(key & U64_MASK)
    return mix64_array(counters)
