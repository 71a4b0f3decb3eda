"""Session: fetch structures, feeds and their errors, variables, assign semantics, atomicity."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import graphnn as gn


@pytest.fixture()
def mlp() -> tuple[gn.Graph, gn.Node, gn.Node, gn.Node]:
    with gn.Graph("mlp") as g:
        x = gn.placeholder((None, 3), name="x")
        w = gn.variable(np.arange(6, dtype=np.float32).reshape(3, 2), name="w")
        y = gn.relu(x @ w - 4.0)
    return g, x, w, y


def test_fetch_structures(mlp) -> None:  # type: ignore[no-untyped-def]
    g, x, w, y = mlp
    sess = gn.Session(g, backend="reference")
    data = np.ones((4, 3), np.float32)
    want = np.maximum(data @ np.arange(6).reshape(3, 2) - 4, 0)
    np.testing.assert_array_equal(sess.run(y, {x: data}), want)
    a, b = sess.run([y, w], {x: data})
    assert isinstance(a, np.ndarray) and b.shape == (3, 2)
    out = sess.run({"y": y, "nested": (w, [y])}, {"x": data})
    assert set(out) == {"y", "nested"} and isinstance(out["nested"], tuple)
    np.testing.assert_array_equal(out["nested"][1][0], want)
    Pair = collections.namedtuple("Pair", "a b")
    pair = sess.run(Pair(y, w), {"x:0": data})
    assert isinstance(pair, Pair)
    np.testing.assert_array_equal(sess.run("w"), np.arange(6).reshape(3, 2))


def test_unknown_batch_dimension_takes_any_size(mlp) -> None:  # type: ignore[no-untyped-def]
    g, x, _, y = mlp
    sess = gn.Session(g, backend="reference")
    for n in (1, 5, 0):
        assert sess.run(y, {x: np.zeros((n, 3))}).shape == (n, 2)


def test_only_the_needed_subgraph_runs() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((2,), name="x")
        idx = gn.placeholder((1,), gn.int64, name="idx")
        bad = gn.take(x, idx)  # would fail with idx=[9], but is never fetched
        ok = x * 2
    assert bad is not None
    np.testing.assert_array_equal(gn.Session(g, backend="reference").run(ok, {x: [1, 2]}), [2, 4])


def test_feed_errors_name_the_placeholder(mlp) -> None:  # type: ignore[no-untyped-def]
    g, x, w, y = mlp
    sess = gn.Session(g, backend="reference")
    with pytest.raises(gn.FeedError, match=r"placeholder 'x' \(f32\[\?,3\]\) is needed .* not fed"):
        sess.run(y)
    with pytest.raises(gn.FeedError, match=r"expects shape f32\[\?,3\], got float64\[4, 2\]"):
        sess.run(y, {x: np.zeros((4, 2))})
    with pytest.raises(gn.FeedError, match=r"expects shape f32\[\?,3\], got float64\[3\]"):
        sess.run(y, {x: np.zeros(3)})
    with pytest.raises(gn.FeedError, match="expects float32, got complex128"):
        sess.run(y, {x: np.zeros((1, 3), complex)})
    with pytest.raises(gn.FeedError, match="cannot feed 'nope'"):
        sess.run(y, {"nope": 1})
    with pytest.raises(gn.FeedError, match="only placeholders are fed"):
        sess.run(y, {w: np.zeros((3, 2))})
    with gn.Graph():
        other = gn.placeholder((3,), name="x")
    with pytest.raises(gn.FeedError, match="belongs to another graph"):
        sess.run(y, {other: np.zeros(3)})


def test_int_placeholder_refuses_float_feed() -> None:
    with gn.Graph() as g:
        i = gn.placeholder((2,), gn.int32, name="i")
    with pytest.raises(gn.FeedError, match="expects int32, got float64"):
        gn.Session(g, backend="reference").run(i, {i: [1.5, 2.0]})
    np.testing.assert_array_equal(
        gn.Session(g, "reference").run(i, {i: np.array([1, 2], np.int64)}), [1, 2])


def test_variables_initialise_lazily_and_assign_commits() -> None:
    with gn.Graph() as g:
        v = gn.variable(np.float32(1.0), name="v")
        inc = gn.assign_add(v, 2.0)
        double = gn.assign(v, v * 2)
        init = gn.global_variables_initializer()
    sess = gn.Session(g, backend="reference")
    assert sess.run(v) == 1.0
    assert sess.run(inc) == 3.0 and sess.run(v) == 3.0
    assert sess.run(double) == 6.0
    assert sess.run(init) is None and sess.run(v) == 1.0
    other = gn.Session(g, backend="reference")  # state belongs to the session
    sess.run(inc)
    assert other.run(v) == 1.0 and sess.run(v) == 3.0


def test_reads_in_a_run_see_the_start_of_run_value() -> None:
    with gn.Graph() as g:
        v = gn.variable(np.zeros(2, np.float32), name="v")
        upd = gn.assign(v, v + 1)
    sess = gn.Session(g, backend="reference")
    before, after = sess.run([v, upd])
    np.testing.assert_array_equal(before, [0, 0])
    np.testing.assert_array_equal(after, [1, 1])
    np.testing.assert_array_equal(sess.run(v), [1, 1])


def test_two_writes_to_one_variable_in_a_run_are_refused() -> None:
    with gn.Graph() as g:
        v = gn.variable(0.0, name="v")
        a, b = gn.assign(v, 1.0), gn.assign_add(v, 1.0)
    with pytest.raises(gn.GraphError, match="variable 'v' is written twice in one run"):
        gn.Session(g, backend="reference").run([a, b])


def test_failed_run_leaves_variables_unchanged() -> None:
    with gn.Graph() as g:
        v = gn.variable(np.array([1.0, 2.0], np.float32), name="v")
        idx = gn.placeholder((1,), gn.int64, name="idx")
        step = gn.group(gn.assign_add(v, 10.0), gn.take(v, idx))
    sess = gn.Session(g, backend="reference")
    sess.run(step, {idx: [0]})
    np.testing.assert_array_equal(sess.run(v), [11, 12])
    with pytest.raises(gn.ExecutionError) as e:
        sess.run(step, {idx: [9]})  # take fails after the assign was computed
    assert "take (node %" in str(e.value) and "out of bounds" in str(e.value)
    np.testing.assert_array_equal(sess.run(v), [11, 12])


def test_fetched_values_are_copies() -> None:
    with gn.Graph() as g:
        v = gn.variable(np.zeros(3, np.float32), name="v")
    sess = gn.Session(g, backend="reference")
    got = sess.run(v)
    got[:] = 7
    np.testing.assert_array_equal(sess.run(v), [0, 0, 0])


def test_assign_checks_shape_and_target() -> None:
    with gn.Graph():
        v = gn.variable(np.zeros(3, np.float32), name="v")
        x = gn.placeholder((3,), name="x")
        want = r"value f32\[2\] does not broadcast to variable f32\[3\]"
        with pytest.raises(gn.ShapeError, match=want):
            gn.assign(v, gn.placeholder((2,)))
        with pytest.raises(gn.DTypeError, match="can only assign to a variable"):
            gn.assign(x, x)


def test_unknown_backend_lists_available() -> None:
    with pytest.raises(gn.GraphError,
                       match="unknown backend .tpu.; available: llvm, opencl, reference"):
        gn.Session(gn.Graph(), backend="tpu")


def test_ieee_semantics_without_warnings() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((3,), name="x")
        y = gn.log(x)
    with np.errstate(all="raise"):
        out = gn.Session(g, backend="reference").run(y, {x: [0.0, -1.0, 1.0]})
    assert out[0] == -np.inf and np.isnan(out[1]) and out[2] == 0


def test_llvm_is_the_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Session, Module.compile and load_model take the default backend when given none: llvm,
    or the one GRAPHNN_BACKEND names."""
    from graphnn.backends.llvm import LLVMBackend
    from graphnn.backends.reference import ReferenceBackend

    from graphnn import nn

    monkeypatch.delenv("GRAPHNN_BACKEND", raising=False)
    with gn.Graph() as g:
        x = gn.placeholder((2,), name="x")
        y = gn.exp(x)
    sess = gn.Session(g)
    assert isinstance(sess.backend, LLVMBackend)
    np.testing.assert_allclose(sess.run(y, {x: [0.0, 1.0]}), np.exp([0.0, 1.0]), rtol=1e-6)
    model = nn.Sequential(nn.Linear(3, 2))
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32), epochs=1, verbose=0)
    assert isinstance(model.trainer.session.backend, LLVMBackend)
    monkeypatch.setenv("GRAPHNN_BACKEND", "reference")
    assert isinstance(gn.Session(g).backend, ReferenceBackend)
    monkeypatch.setenv("GRAPHNN_BACKEND", "tpu")
    with pytest.raises(gn.GraphError, match="unknown backend 'tpu' \\(from GRAPHNN_BACKEND\\)"):
        gn.Session(g)
