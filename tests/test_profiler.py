"""``Session.profile``: every step of a fetch set timed on its own, on every backend, without
changing the session's variables or run counter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from graphnn.backends.llvm import LLVMBackend
from graphnn.backends.opencl import OpenCLBackend

import graphnn as gn
from graphnn import optim
from graphnn.errors import GraphError
from graphnn.ir import Graph, Node
from graphnn.profiler import KernelTime, Profile

W0 = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
X = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)


def _training_step() -> tuple[Graph, Node, Node, Node]:
    """A step that writes a variable (momentum SGD) and draws random numbers (dropout)."""
    with gn.Graph("step") as g:
        x = gn.placeholder((None, 3), name="x")
        w = gn.variable(W0.copy(), name="w")
        y = gn.dropout(gn.relu(x @ w), p=0.25, seed=1)
        loss = gn.mean(y * y)
        step = optim.SGD(0.1, momentum=0.5).build(loss, [w])
    return g, step.apply, loss, w


def _backend(name: str, skip: frozenset[str] = frozenset()) -> object:
    if name == "llvm":
        return LLVMBackend(cache=False, skip=skip)
    return OpenCLBackend() if name == "opencl" else name


@pytest.mark.parametrize("backend", ["reference", "llvm", "opencl"])
@pytest.mark.parametrize("opt_level", [0, 2])
def test_profile_times_every_step_and_changes_nothing(backend: str, opt_level: int) -> None:
    g, apply, _, w = _training_step()
    sess = gn.Session(g, backend=_backend(backend), opt_level=opt_level)  # type: ignore[arg-type]
    sess.run(apply, {"x": X})  # one committed step: momentum state exists
    before = sess.run(w)
    counter = sess.run_counter
    prof = sess.profile(apply, {"x": X}, repeat=3)
    assert isinstance(prof, Profile)
    assert prof.run_s > 0 and prof.kernels
    assert all(isinstance(k, KernelTime) and k.seconds > 0 for k in prof.kernels)
    ops = "+".join(k.op for k in prof.kernels)
    for op in ("matmul", "relu", "dropout"):  # fused or not, each op is named
        assert op in ops
    assert all(k.node.startswith("%") for k in prof.kernels)
    if backend != "reference":  # the generated kernels, by name
        assert any(k.kernel.startswith("k0_") for k in prof.kernels)
    table = str(prof)
    assert table.splitlines()[0].split()[:3] == ["ms", "share", "op"]
    assert len(table.splitlines()) == len(prof.kernels) + 2
    assert prof.kernel_s == pytest.approx(sum(k.seconds for k in prof.kernels))
    # neither the variables nor the run counter moved: the next step is the one we would
    # have taken without profiling
    assert sess.run_counter == counter
    np.testing.assert_array_equal(sess.run(w), before)
    twin = gn.Session(g, backend=_backend(backend), opt_level=opt_level)  # type: ignore[arg-type]
    twin.run(apply, {"x": X})
    sess.run(apply, {"x": X})
    twin.run(apply, {"x": X})
    np.testing.assert_array_equal(sess.run(w), twin.run(w))


def test_llvm_profile_names_numpy_fallbacks_and_lists_the_top() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((64, 64), name="x")
        y = gn.relu(x @ gn.constant(np.full((64, 64), 0.01, np.float32)))
        z = gn.sum(y, axis=1)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, skip=frozenset({"relu"})))
    prof = sess.profile(z, {x: np.ones((64, 64), np.float32)}, repeat=2)
    assert [(k.op, k.kernel) for k in prof.kernels] == [
        ("matmul", "k0_matmul"), ("relu", "numpy"), ("sum", "k1_sum")]
    assert len(prof.table(top=1).splitlines()) == 3


def test_profile_refuses_a_backend_that_cannot_time_kernels() -> None:
    class Plain:  # an executable with run() only
        def __init__(self, exe: object) -> None:
            self.exe = exe
            for name in ("fetches", "placeholders", "variables", "random", "run"):
                setattr(self, name, getattr(exe, name))

    class Backend:
        name = "plain"

        def compile(self, graph: Graph, fetches: Sequence[Node]) -> Plain:
            from graphnn.backends.reference import ReferenceBackend

            return Plain(ReferenceBackend().compile(graph, fetches))

    with gn.Graph() as g:
        x = gn.placeholder((2,), name="x")
        y = x * 2.0
    sess = gn.Session(g, backend=Backend())  # type: ignore[arg-type]
    np.testing.assert_array_equal(sess.run(y, {x: np.ones(2)}), [2.0, 2.0])
    with pytest.raises(GraphError, match="backend 'plain' cannot time its kernels"):
        sess.profile(y, {x: np.ones(2)})
