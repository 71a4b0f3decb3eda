"""Semantic equivalence: graphs run on the reference backend before and after every pass and
pipeline give the same results (bit for bit where no weight is re-laid out)."""

from __future__ import annotations

import numpy as np
import pytest
from graphnn.passes import PASSES, PIPELINES, PassManager
from hypothesis import given, settings
from hypothesis import strategies as st

import graphnn as gn
from graphnn import models, nn

UNARY = ["relu", "tanh", "sigmoid", "neg", "exp", "abs", "softsign", "identity"]
BINARY = ["add", "sub", "mul", "maximum", "minimum", "div"]
REDUCE = ["sum", "mean", "max"]


@st.composite
def random_graphs(draw: st.DrawFn) -> tuple[gn.Graph, dict]:
    """Random DAGs of elementwise ops, broadcasting, reductions, constants and fan-out."""
    shapes = [(3, 4), (4,), (1, 4), (3, 1), ()]
    with gn.Graph("random") as g:
        values = [gn.placeholder(draw(st.sampled_from(shapes)), name=f"x{i}")
                  for i in range(draw(st.integers(1, 3)))]
        for _ in range(draw(st.integers(1, 14))):
            kind = draw(st.sampled_from(["u", "b", "b", "c", "r"]))
            a = draw(st.sampled_from(values))
            if kind == "u":
                values.append(getattr(gn, draw(st.sampled_from(UNARY)))(a))
            elif kind == "b":
                values.append(getattr(gn, draw(st.sampled_from(BINARY)))(
                    a, draw(st.sampled_from(values))))
            elif kind == "c":
                values.append(a * draw(st.sampled_from([1.0, 0.5, -0.0, 2.0])))
            elif a.ndim:
                values.append(getattr(gn, draw(st.sampled_from(REDUCE)))(a, axis=-1,
                                                                          keepdims=True))
        outs = draw(st.lists(st.sampled_from(values[1:] or values), min_size=1, max_size=3,
                             unique=True))
        g.outputs = tuple(outs)
    rng = np.random.default_rng(0)
    feeds = {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in g.placeholders}
    return g, feeds


def _run(graph: gn.Graph, feeds: dict) -> list[np.ndarray]:
    present = {p.name for p in graph.placeholders}  # DCE may drop an unused input
    return gn.Session(graph, backend="reference").run(list(graph.outputs),
                                 {k: v for k, v in feeds.items() if k in present})


@settings(max_examples=80, deadline=None)
@given(random_graphs(), st.sampled_from(sorted(PIPELINES)))
def test_pipelines_preserve_results_on_random_graphs(case: tuple, level: int) -> None:
    graph, feeds = case
    shapes = {k: v.shape for k, v in feeds.items()}
    before = _run(graph, feeds)
    out = PassManager(["specialize", *PIPELINES[level]], verify=True, shapes=shapes).run(graph)
    for a, b in zip(before, _run(out, feeds)):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(random_graphs(), st.sampled_from(sorted(set(PASSES) - {"specialize", "freeze_variables",
                                                               "plan_memory"})))
def test_each_pass_alone_preserves_results(case: tuple, name: str) -> None:
    graph, feeds = case
    out = PassManager([name], verify=True).run(graph)
    for a, b in zip(_run(graph, feeds), _run(out, feeds)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model", sorted(models.MODELS))
@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("freeze", [False, True])
def test_example_models_through_every_level(model: str, level: int, freeze: bool) -> None:
    graph, _ = models.inference_graph(model, batch=3)
    shape = graph.placeholders[0].shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = PassManager(opt_level=level, verify=True, variables_as_constants=freeze).run(graph)
    np.testing.assert_allclose(_run(out, {"x": x})[0], _run(graph, {"x": x})[0], rtol=1e-4,
                               atol=1e-6)


def test_training_runs_identically_at_every_level() -> None:
    x = np.random.default_rng(0).standard_normal((48, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    curves = []
    for level in (0, 1, 2, 3):
        nn.init.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                              nn.Linear(16, 2))
        model.compile(gn.optim.Adam(0.02), backend="reference", opt_level=level)
        curves.append(model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"])
    assert curves[0] == curves[1] == curves[2] == curves[3]
