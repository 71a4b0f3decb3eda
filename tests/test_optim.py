"""Optimizers: update rules against numpy transcriptions of their formulas and against
torch.optim (optional); clipping, accumulation, learning-rate variables, schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphnn as gn
from graphnn import optim

A = np.random.default_rng(0).standard_normal((5, 3))
B = np.random.default_rng(1).standard_normal(5)
W0 = np.random.default_rng(2).standard_normal(3)


def grad_np(w: np.ndarray) -> np.ndarray:
    """Gradient of sum((A w - b)^2)."""
    return 2 * A.T @ (A @ w - B)


def run_graphnn(opt: optim.Optimizer, steps: int) -> list[np.ndarray]:
    with gn.Graph() as g:
        w = gn.variable(W0.copy(), name="w")
        r = gn.matmul(gn.constant(A), w) - gn.constant(B)
        loss = gn.sum(r * r)
        step = opt.build(loss, [w])
    sess = gn.Session(g, backend="reference")
    out = []
    for _ in range(steps):
        sess.run(step.apply)
        out.append(sess.run(w))
    return out


def test_sgd_momentum_nesterov_weight_decay_against_formula() -> None:
    lr, mu, wd = 0.01, 0.9, 0.1
    got = run_graphnn(optim.SGD(lr, momentum=mu, weight_decay=wd, nesterov=True), 4)
    w, buf = W0.copy(), None
    for step in range(4):
        g = grad_np(w) + wd * w
        buf = g if buf is None else mu * buf + g
        w = w - lr * (g + mu * buf)
        np.testing.assert_allclose(got[step], w, rtol=1e-12)


def test_adam_against_formula() -> None:
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    got = run_graphnn(optim.Adam(lr), 5)
    w, m, v = W0.copy(), np.zeros(3), np.zeros(3)
    for t in range(1, 6):
        g = grad_np(w)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(got[t - 1], w, rtol=1e-12)


torch_configs = [
    ("SGD", {"lr": 0.01}), ("SGD", {"lr": 0.01, "momentum": 0.9, "dampening": 0.3}),
    ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05}),
    ("Adam", {"lr": 0.05}), ("Adam", {"lr": 0.05, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.05}), ("AdamW", {"lr": 0.05, "weight_decay": 0.3, "betas": (0.8, 0.9)}),
    ("RMSprop", {"lr": 0.01}), ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}),
    ("RMSprop", {"lr": 0.01, "weight_decay": 0.1}),
    ("Adagrad", {"lr": 0.1}), ("Adagrad", {"lr": 0.1, "lr_decay": 0.1,
                                          "initial_accumulator_value": 0.2}),
]


@pytest.mark.parametrize(("name", "kwargs"), torch_configs)
def test_against_torch_optim(name: str, kwargs: dict) -> None:
    torch = pytest.importorskip(
        "torch", reason="PyTorch not installed: the optional torch.optim comparison needs "
                        "`pip install torch==2.13.0` (CPU build)")
    got = run_graphnn(getattr(optim, name)(**kwargs), 6)
    w = torch.tensor(W0.copy(), requires_grad=True)
    opt = getattr(torch.optim, name)([w], **kwargs)
    a, b = torch.tensor(A), torch.tensor(B)
    for step in range(6):
        opt.zero_grad()
        ((a @ w - b) ** 2).sum().backward()
        opt.step()
        np.testing.assert_allclose(got[step], w.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_clip_by_value_and_global_norm() -> None:
    g0 = grad_np(W0)
    got = run_graphnn(optim.SGD(1.0, clip_value=0.5), 1)[0]
    np.testing.assert_allclose(got, W0 - np.clip(g0, -0.5, 0.5), rtol=1e-12)
    got = run_graphnn(optim.SGD(1.0, clip_norm=1.0), 1)[0]
    scale = min(1.0, 1.0 / (np.linalg.norm(g0) + 1e-6))
    np.testing.assert_allclose(got, W0 - g0 * scale, rtol=1e-12)


def test_gradient_accumulation_equals_the_large_batch() -> None:
    x = np.random.default_rng(3).standard_normal((4, 3))
    t = np.random.default_rng(4).standard_normal(4)

    def build(accumulate: int) -> tuple[gn.Session, optim.TrainStep, gn.Node, gn.Node, gn.Node]:
        with gn.Graph() as g:
            xs = gn.placeholder((None, 3), gn.float64, name="x")
            ts = gn.placeholder((None,), gn.float64, name="t")
            w = gn.variable(W0.copy(), name="w")
            loss = gn.mean((xs @ w - ts) ** 2)
            step = optim.SGD(0.1, momentum=0.5, accumulate_steps=accumulate).build(loss, [w])
        return gn.Session(g, backend="reference"), step, xs, ts, w

    big, step, xs, ts, w = build(1)
    big.run(step.apply, {xs: x, ts: t})
    small, step2, xs2, ts2, w2 = build(2)
    small.run(step2.accumulate, {xs2: x[:2], ts2: t[:2]})
    np.testing.assert_array_equal(small.run(w2), W0)  # accumulating does not update
    small.run(step2.apply, {xs2: x[2:], ts2: t[2:]})
    np.testing.assert_allclose(small.run(w2), big.run(w), rtol=1e-12)


def test_learning_rate_is_a_variable() -> None:
    opt = optim.SGD(0.1)
    with gn.Graph() as g:
        w = gn.variable(np.float64(1.0), name="w")
        step = opt.build(w * w, [w])
    sess = gn.Session(g, backend="reference")
    opt.set_lr(sess, 0.25)
    assert opt.get_lr(sess) == 0.25
    sess.run(step.apply)
    assert sess.run(w) == pytest.approx(1.0 - 0.25 * 2.0)
    with pytest.raises(gn.GraphError, match="already built"):
        opt.build(w * w, [w])


def test_schedules() -> None:
    assert [optim.StepLR(2, 0.5)(e, 1.0) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    assert optim.ExponentialLR(0.9)(3, 2.0) == pytest.approx(2 * 0.9**3)
    cos = optim.CosineAnnealingLR(10, eta_min=0.1)
    assert cos(0, 1.0) == 1.0 and cos(10, 1.0) == pytest.approx(0.1)
    assert cos(5, 1.0) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)
    warm = optim.LinearWarmup(4, 0.2, after=optim.StepLR(1, 0.5))
    assert [warm(e, 1.0) for e in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 0.5])
    plateau = optim.ReduceLROnPlateau(patience=1, factor=0.5)
    lrs = [plateau.step(v, 1.0) for v in (1.0, 0.5, 0.6, 0.7)]
    assert lrs == [1.0, 1.0, 1.0, 0.5]
