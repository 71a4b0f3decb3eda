"""Weight initialisers, seeded and reproducible.

Each returns a new numpy array of ``shape`` (float32 unless ``dtype`` is given), drawn from
``generator`` or from graphnn's global one (``manual_seed`` resets it), so a model built after
``manual_seed(0)`` always starts from the same weights. Fans follow PyTorch
(``torch.nn.init._calculate_fan_in_and_fan_out``): for a weight (out, in, *kernel),
fan_in = in * prod(kernel) and fan_out = out * prod(kernel).

Refs: Glorot & Bengio 2010 (xavier), He et al. 2015 (kaiming), LeCun et al. 1998 (lecun),
Saxe et al. 2014 (orthogonal); torch.nn.init.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

_generator = [np.random.default_rng(0)]


def manual_seed(seed: int) -> None:
    """Reset the global generator that initialisers and layers draw from."""
    _generator[0] = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _generator[0]


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight; raises ValueError for fewer than 2 dims, as PyTorch."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight of at least 2 dims, got {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _gain(nonlinearity: str, a: float = 0.0) -> float:
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + a * a))
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "selu":
        return 3.0 / 4
    return 1.0  # linear, sigmoid, conv


def _rng(g: np.random.Generator | None) -> np.random.Generator:
    return g if g is not None else _generator[0]


def uniform(shape: Sequence[int], low: float, high: float, dtype: Any = np.float32,
            generator: np.random.Generator | None = None) -> np.ndarray:
    return _rng(generator).uniform(low, high, tuple(shape)).astype(dtype)


def normal(shape: Sequence[int], std: float, dtype: Any = np.float32,
           generator: np.random.Generator | None = None) -> np.ndarray:
    return (_rng(generator).standard_normal(tuple(shape)) * std).astype(dtype)


def xavier_uniform(shape: Sequence[int], gain: float = 1.0, **kw: Any) -> np.ndarray:
    """U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    fi, fo = fans(shape)
    bound = gain * math.sqrt(6.0 / (fi + fo))
    return uniform(shape, -bound, bound, **kw)


def xavier_normal(shape: Sequence[int], gain: float = 1.0, **kw: Any) -> np.ndarray:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fi, fo = fans(shape)
    return normal(shape, gain * math.sqrt(2.0 / (fi + fo)), **kw)


def kaiming_uniform(shape: Sequence[int], a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", **kw: Any) -> np.ndarray:
    """U(-b, b) with b = gain * sqrt(3 / fan); PyTorch's Linear/Conv default uses a = sqrt(5)."""
    fi, fo = fans(shape)
    fan = fi if mode == "fan_in" else fo
    bound = _gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform(shape, -bound, bound, **kw)


def kaiming_normal(shape: Sequence[int], a: float = 0.0, mode: str = "fan_in",
                   nonlinearity: str = "leaky_relu", **kw: Any) -> np.ndarray:
    """N(0, std^2) with std = gain / sqrt(fan)."""
    fi, fo = fans(shape)
    return normal(shape, _gain(nonlinearity, a) / math.sqrt(fi if mode == "fan_in" else fo), **kw)


def lecun_normal(shape: Sequence[int], **kw: Any) -> np.ndarray:
    """N(0, 1/fan_in): the initialisation SELU networks assume."""
    return normal(shape, 1 / math.sqrt(fans(shape)[0]), **kw)


def orthogonal(shape: Sequence[int], gain: float = 1.0, dtype: Any = np.float32,
               generator: np.random.Generator | None = None) -> np.ndarray:
    """A (semi-)orthogonal matrix over (shape[0], prod(shape[1:])) from a QR decomposition."""
    rows, cols = shape[0], math.prod(shape[1:])
    a = _rng(generator).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # a uniform distribution over orthogonal matrices (Mezzadri 2007)
    q = q.T if rows < cols else q
    return (gain * q[:rows, :cols]).reshape(tuple(shape)).astype(dtype)


def zeros(shape: Sequence[int], dtype: Any = np.float32, **_: Any) -> np.ndarray:
    return np.zeros(tuple(shape), dtype)


def ones(shape: Sequence[int], dtype: Any = np.float32, **_: Any) -> np.ndarray:
    return np.ones(tuple(shape), dtype)


def constant(shape: Sequence[int], value: float, dtype: Any = np.float32, **_: Any) -> np.ndarray:
    return np.full(tuple(shape), value, dtype)
