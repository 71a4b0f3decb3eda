"""graphnn's counter-based random numbers: one definition every backend reproduces bit for bit.

A random op draws ``uniform(seed, counter, i)`` for element ``i`` (row-major) where ``seed`` is the
op's attribute and ``counter`` the session's run counter, so a graph gives a fresh mask every run
and the same masks for the same seed and step, on every backend (TensorFlow's op seed + step,
JAX's stateless keys).

The hash is Chris Wellons' ``lowbias32`` (2018; bias 0.17, "hash-prospector"), chosen because it is
five 32-bit integer operations, which LLVM and OpenCL C express directly:
``key = h(h(seed) ^ counter)``, ``bits = h(h(i ^ key) + key)``, ``u = (bits >> 8) * 2**-24``.
"""

from __future__ import annotations

import numpy as np

LOWBIAS32 = (0x7FEB352D, 0x846CA68B)  # the hash's two multipliers (the code generators use them)
_M1, _M2 = (np.uint32(m) for m in LOWBIAS32)


def lowbias32(x: np.ndarray) -> np.ndarray:
    """The lowbias32 integer hash, elementwise on uint32 (wrapping arithmetic)."""
    x = x.astype(np.uint32, copy=True)
    x ^= x >> np.uint32(16)
    x *= _M1
    x ^= x >> np.uint32(15)
    x *= _M2
    x ^= x >> np.uint32(16)
    return x


def uniform(seed: int, counter: int, shape: tuple[int, ...]) -> np.ndarray:
    """float64 values in [0, 1) with 24 random bits each, as defined in the module docstring."""
    with np.errstate(over="ignore"):
        seed_bits = lowbias32(np.array([seed & 0xFFFFFFFF], np.uint32))
        key = lowbias32(seed_bits ^ np.uint32(counter & 0xFFFFFFFF))[0]
        idx = np.arange(int(np.prod(shape)), dtype=np.uint64).astype(np.uint32)
        bits = lowbias32(lowbias32(idx ^ key) + key)
    return ((bits >> np.uint32(8)).astype(np.float64) * 2.0**-24).reshape(shape)
