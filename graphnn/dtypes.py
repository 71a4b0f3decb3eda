"""The five element types of graphnn and the rules that convert user values to them.

``DType`` members print in the short form used by the text IR (``f32``, ``f64``, ``i32``,
``i64``, ``bool``). ``as_dtype`` accepts a ``DType``, its short or long name (``"float32"``), or a
numpy dtype or type; anything else (float16, complex, strings) raises ``DTypeError``.
"""

from __future__ import annotations

import builtins
import enum
from typing import Any

import numpy
import numpy as np

from graphnn.errors import DTypeError


class DType(enum.Enum):
    """An element type. ``value`` is the short name used in the text IR."""

    float32 = "f32"
    float64 = "f64"
    int32 = "i32"
    int64 = "i64"
    bool = "bool"

    @property
    def np(self) -> numpy.dtype[Any]:
        """The numpy dtype with the same layout."""
        return _NUMPY_BY_VALUE[self._value_]  # a str key: Enum.__hash__ is Python code

    @property
    def is_float(self) -> builtins.bool:
        return self in (DType.float32, DType.float64)

    @property
    def is_int(self) -> builtins.bool:
        return self in (DType.int32, DType.int64)

    @property
    def is_bool(self) -> builtins.bool:
        return self is DType.bool

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return int(self.np.itemsize)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"graphnn.{self.name}"


float32 = DType.float32
float64 = DType.float64
int32 = DType.int32
int64 = DType.int64
bool_ = DType.bool

_TO_NUMPY: dict[DType, numpy.dtype[Any]] = {
    DType.float32: np.dtype(np.float32),
    DType.float64: np.dtype(np.float64),
    DType.int32: np.dtype(np.int32),
    DType.int64: np.dtype(np.int64),
    DType.bool: np.dtype(np.bool_),
}
_NUMPY_BY_VALUE = {k.value: v for k, v in _TO_NUMPY.items()}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}
_BY_NAME = {d.name: d for d in DType} | {d.value: d for d in DType}

FLOATS = frozenset({DType.float32, DType.float64})
INTS = frozenset({DType.int32, DType.int64})
NUMERIC = FLOATS | INTS
ALL = frozenset(DType)


def as_dtype(value: Any) -> DType:
    """Convert a ``DType``, a name (``"float32"``/``"f32"``) or a numpy dtype to a ``DType``.

    Raises:  DTypeError for types graphnn does not support (float16, complex, object, ...).
    """
    if isinstance(value, DType):
        return value
    if isinstance(value, str) and value in _BY_NAME:
        return _BY_NAME[value]
    try:
        npd = np.dtype(value)
    except TypeError:
        raise DTypeError(f"{value!r} is not a dtype; use one of {names()}") from None
    if npd in _FROM_NUMPY:
        return _FROM_NUMPY[npd]
    raise DTypeError(f"dtype {npd} is not supported by graphnn; use one of {names()}")


def names() -> str:
    return ", ".join(d.name for d in DType)


def infer_from_value(value: Any) -> DType:
    """The dtype a constant built from ``value`` gets.

    numpy arrays and numpy scalars keep their dtype (float16 and other unsupported types raise);
    Python floats become float32, Python ints int64 and Python bools bool, as in PyTorch.
    """
    if isinstance(value, (np.ndarray, np.generic)):
        return as_dtype(value.dtype)
    arr = np.asarray(value)
    if arr.dtype == np.bool_:
        return DType.bool
    if arr.dtype.kind in "iu":
        return DType.int64
    if arr.dtype.kind == "f":
        return DType.float32
    raise DTypeError(f"cannot make a tensor from {type(value).__name__} (numpy dtype {arr.dtype})")
