"""The shared op matrix: every row of the op table x every backend x dtype x input layout.

Each result is compared with an expectation written independently of graphnn (tests/ops/cases*.py)
and its shape and dtype are asserted. Tolerances: float32 rtol 1e-4, atol 1e-5 (expectations are
computed in float64, so this covers float32 rounding of accumulations); float64 rtol 1e-10,
atol 1e-12; integers and bools exactly.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from graphnn.backends import available_backends

import graphnn as gn
from tests.ops import cases_nn  # noqa: F401 - registers the NN rows
from tests.ops.cases import CASES, Case

TOLERANCES = {"float32": (1e-4, 1e-5), "float64": (1e-10, 1e-12)}
ROWS = [pytest.param(c, d, id=f"{c.id}-{d}") for c in CASES for d in c.dtypes]

# Ops every row uses, or tested where their semantics live (with the reason).
COVERED_ELSEWHERE = {
    "placeholder": "every row feeds its inputs through placeholders",
    "constant": "tests/ir/test_building.py (scalars, arrays, dtype rules)",
    "variable": "tests/test_session.py (initialisation, state)",
    "assign": "tests/test_session.py (run semantics, atomicity)",
    "assign_add": "tests/test_session.py",
    "group": "tests/test_session.py",
    "dropout": "tests/ops/test_dropout.py (statistics, determinism); "
               "tests/backends/test_native_ops.py (every backend, bit for bit the reference's)",
    "fused": "tests/passes/test_equivalence.py (every fused graph against its unfused form)",
    **{op: "backward kernel: checked by finite differences of its forward op "
           "(tests/test_autodiff.py)"
       for op in ("slice_grad", "take_grad", "gather_grad", "pad_grad", "conv_weight_grad",
                  "max_pool_grad", "avg_pool_grad", "adaptive_pool_grad")},
}


def strided(a: np.ndarray) -> np.ndarray:
    """The same values as a non-contiguous view (every other element of a doubled last axis)."""
    if a.ndim == 0 or a.size <= 1:
        return a
    doubled = np.repeat(a[..., None], 2, axis=-1).reshape(a.shape[:-1] + (2 * a.shape[-1],))
    view = doubled[..., ::2]
    assert not view.flags.c_contiguous
    return view


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize(("case", "dtype"), ROWS)
def test_op(case: Case, dtype: str, backend: str, layout: str) -> None:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))  # same inputs every run
    arrays = [spec.make(rng, dtype) for spec in case.inputs]
    with gn.Graph(case.op) as g:
        nodes = [gn.placeholder(a.shape, a.dtype, name=f"in{i}") for i, a in enumerate(arrays)]
        out = case.build(*nodes)
    assert case.op in {n.op for n in g.nodes}, f"row {case.id} does not build a {case.op} node"
    feeds = {n: strided(a) if layout == "strided" else a for n, a in zip(nodes, arrays)}
    got = gn.Session(g, backend=backend).run(out, feeds)
    expected = np.asarray(case.expect(*arrays))
    want_dtype = np.dtype(case.out_dtype or dtype)
    assert got.dtype == want_dtype
    assert got.shape == expected.shape, f"shape {got.shape} != expected {expected.shape}"
    assert got.shape == tuple(out.shape), "result shape differs from the inferred shape"
    if want_dtype.kind in "biu":
        np.testing.assert_array_equal(got, expected.astype(want_dtype))
    else:
        rtol, atol = TOLERANCES[want_dtype.name]
        np.testing.assert_allclose(got, expected, rtol=case.rtol or rtol, atol=case.atol or atol)


def test_every_registered_op_has_a_row() -> None:
    tested = {c.op for c in CASES}
    missing = set(gn.all_ops()) - tested - set(COVERED_ELSEWHERE)
    assert not missing, f"ops without a row in the op table: {sorted(missing)}"
    assert not set(COVERED_ELSEWHERE) - set(gn.all_ops()), "stale COVERED_ELSEWHERE entries"
