"""Ops that index by data (take, gather and their gradients) on the code-generating backends.

Each runs as a native kernel (never the numpy fallback) and matches the reference, negative
indices and repeated indices (the gradients add) included. An index out of range sets the
kernel's status flag: the run raises ExecutionError naming the node and the bad index, as the
reference does, variables keep their values, and the next run works. An ahead-of-time library
returns GRAPHNN_ERR_INDEX instead.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from graphnn.backends.aot.api import STATUS
from graphnn.backends.llvm import LLVMBackend
from graphnn.backends.opencl import OpenCLBackend

import graphnn as gn
from graphnn.ops.registry import make_node
from tests.backends.native import BACKENDS, run_native


def _session(backend: str, g: gn.Graph, skip: frozenset[str] | None = None) -> gn.Session:
    impl = LLVMBackend(cache=False, skip=skip) if backend == "llvm" else OpenCLBackend(skip=skip)
    return gn.Session(g, backend=impl)


TAKES = [  # x shape, index shape, axis, index range
    ((5, 3), (2, 4), 0, (-5, 5)),
    ((4, 6, 3), (7,), 1, (-6, 6)),
    ((3, 4, 9), (2, 2, 3), -1, (-9, 9)),
    ((1000, 64), (300,), 0, (0, 1000)),  # an embedding lookup, large enough for threads
    ((4, 0, 2), (0,), 1, (0, 1)),  # empty axis, no indices
    ((3, 5), (2, 0), 0, (0, 3)),  # empty index array
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("xs", "ishape", "axis", "bounds"), TAKES)
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32])
def test_take_and_its_gradient(backend: str, xs: tuple, ishape: tuple, axis: int,
                               bounds: tuple[int, int], idx_dtype: type) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    idx = rng.integers(*bounds, ishape).astype(idx_dtype) if bounds[1] > bounds[0] \
        else np.zeros(ishape, idx_dtype)
    got, want = run_native(backend, lambda xn, i: gn.take(xn, i, axis=axis), [x, idx])
    np.testing.assert_array_equal(got, want)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    got, want = run_native(backend, lambda d, i, xn: make_node("take_grad", [d, i, xn],
                                                                 {"axis": axis}), [dy, idx, x])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("xs", "ishape", "axis"), [
    ((3, 4), (3, 6), 1), ((4, 2), (3, 2), 0), ((2, 5, 3), (2, 7, 3), -2), ((6,), (20,), 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_gather_and_its_gradient(backend: str, xs: tuple, ishape: tuple, axis: int,
                                 dtype: type) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-50, 50, xs).astype(dtype)
    n = xs[axis]
    idx = rng.integers(-n, n, ishape)  # negative indices count from the end; many repeats
    got, want = run_native(backend, lambda xn, i: gn.gather(xn, i, axis=axis), [x, idx])
    np.testing.assert_array_equal(got, want)
    if dtype == np.int32:
        return  # gradients are float
    dy = rng.standard_normal(ishape).astype(dtype)
    got, want = run_native(backend, lambda d, i, xn: make_node("gather_grad", [d, i, xn],
                                                                 {"axis": axis}), [dy, idx, x])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
@pytest.mark.parametrize(("op", "bad", "message"), [
    ("take", [0, 3], "index 3 is out of bounds for axis 0 with size 3"),
    ("take", [-4, 1], "index -4 is out of bounds for axis 0 with size 3"),
    ("gather", [1, 7], "index 7 is out of bounds for axis 0 with size 3"),
])
def test_an_index_out_of_range_fails_the_run_and_changes_nothing(
        backend: str, op: str, bad: list[int], message: str) -> None:
    with gn.Graph() as g:
        w = gn.variable(np.array([1.0, 2.0, 3.0], np.float32), name="w")
        idx = gn.placeholder((2,), gn.int64, name="idx")
        picked = gn.take(w, idx) if op == "take" else gn.gather(w, idx, axis=0)
        loss = gn.sum(picked * picked)
        step = gn.optim.SGD(0.5).build(loss, [w]).apply
    sess = _session(backend, g)
    with pytest.raises(gn.ExecutionError, match=f"{op} \\(node %.*{message}"):
        sess.run([step, loss], {idx: np.array(bad)})
    np.testing.assert_array_equal(sess.run(w), [1, 2, 3])  # the failed step wrote nothing
    # the next run is fine: the flag was cleared
    _, got = sess.run([step, loss], {idx: np.array([0, 0])})
    assert got == 2.0
    np.testing.assert_allclose(sess.run(w), [-1, 2, 3])  # two gradients of 2 * 1 added up


def test_a_compiled_library_returns_an_index_status(tmp_path: pathlib.Path) -> None:
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    with gn.Graph():
        tok = gn.placeholder((4,), gn.int64, name="tok")
        out = gn.take(gn.constant(table), tok) * 2.0
    gn.compile(out, [np.zeros(4, np.int64)], output=str(tmp_path / "emb"))
    model = gn.load_compiled(tmp_path / "libemb.so")
    np.testing.assert_array_equal(model(np.array([0, 5, -1, 2])), table[[0, 5, -1, 2]] * 2)
    with pytest.raises(gn.ExecutionError, match="an index input .* is out of range"):
        model(np.array([0, 6, 1, 2]))
    np.testing.assert_array_equal(model(np.array([1, 1, 1, 1])), table[[1, 1, 1, 1]] * 2)
    header = (tmp_path / "emb.h").read_text()
    assert f"GRAPHNN_ERR_INDEX = {STATUS['GRAPHNN_ERR_INDEX']}" in header


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_an_index_error_comes_before_a_later_numpy_step(backend: str) -> None:
    """A numpy fallback step (integer pow, left to numpy) after the bad take: the index error is
    raised, and the flag does not outlive the run."""
    with gn.Graph() as g:
        x = gn.placeholder((4,), gn.int32, name="x")
        idx = gn.placeholder((3,), gn.int64, name="idx")
        picked = gn.take(x, idx)
        out = gn.pow(picked, picked)
    sess = _session(backend, g, skip=frozenset({"pow"}))
    feeds = {x: np.array([1, 2, 3, 4], np.int32)}
    with pytest.raises(gn.ExecutionError, match="take .*index 4 is out of bounds"):
        sess.run(out, {**feeds, idx: np.array([0, 4, 1])})
    np.testing.assert_array_equal(sess.run(out, {**feeds, idx: np.array([3, 1, 0])}), [256, 4, 1])
    exe = next(iter(sess._cache.values()))
    assert getattr(exe, "exe", exe).fallback_ops == {"pow"}
