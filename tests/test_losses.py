"""Losses against numpy formulas (always) and torch.nn.functional (optional); stability at
extreme logits; reductions; metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

import graphnn as gn
from graphnn import losses

rng = np.random.default_rng(0)
LOGITS = rng.standard_normal((6, 4))
LABELS = np.array([0, 3, 1, 1, 2, 3])
PROBS = np.exp(LOGITS) / np.exp(LOGITS).sum(1, keepdims=True)


def run(build, *arrays):  # type: ignore[no-untyped-def]
    with gn.Graph() as g:
        nodes = [gn.placeholder(a.shape, a.dtype) for a in arrays]
        out = build(*nodes)
    return gn.Session(g, backend="reference").run(out, dict(zip(nodes, arrays)))


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def test_cross_entropy_variants_against_numpy() -> None:
    lp = log_softmax_np(LOGITS)
    nll = -lp[np.arange(6), LABELS]
    assert run(losses.cross_entropy, LOGITS, LABELS) == pytest.approx(nll.mean())
    assert run(lambda x, t: losses.cross_entropy(x, t, reduction="sum"), LOGITS, LABELS) == \
        pytest.approx(nll.sum())
    np.testing.assert_allclose(run(lambda x, t: losses.cross_entropy(x, t, reduction="none"),
                                   LOGITS, LABELS), nll)
    w = np.array([1.0, 2.0, 0.5, 3.0])
    want = (w[LABELS] * nll).sum() / w[LABELS].sum()
    assert run(lambda x, t, w: losses.cross_entropy(x, t, weight=w), LOGITS, LABELS, w) == \
        pytest.approx(want)
    ignored = LABELS.copy()
    ignored[[1, 4]] = -100
    keep = ignored != -100
    assert run(losses.cross_entropy, LOGITS, ignored) == pytest.approx(nll[keep].mean())
    eps = 0.1
    smooth = (1 - eps) * nll + eps * (-lp.mean(axis=1))
    assert run(lambda x, t: losses.cross_entropy(x, t, label_smoothing=eps), LOGITS, LABELS) == \
        pytest.approx(smooth.mean())
    soft = rng.dirichlet(np.ones(4), 6)
    assert run(losses.cross_entropy, LOGITS, soft) == pytest.approx(-(soft * lp).sum(1).mean())


def test_stable_at_extreme_logits() -> None:
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    t = np.array([1, 2])
    got = run(lambda x, t: losses.cross_entropy(x, t, reduction="none"), x, t)
    np.testing.assert_allclose(got, [2e4, np.log(3)])
    z = np.array([1e4, -1e4, 30.0, -30.0])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    got = run(lambda z, y: losses.bce_with_logits(z, y, reduction="none"), z, y)
    np.testing.assert_allclose(got, [1e4, 1e4, np.log1p(np.exp(-30)), np.log1p(np.exp(-30))])
    assert np.isfinite(run(losses.focal_loss, z, y))


def test_regression_and_margin_losses_against_numpy() -> None:
    p, t = rng.standard_normal(8) * 2, rng.standard_normal(8)
    d = p - t
    assert run(losses.mse_loss, p, t) == pytest.approx((d**2).mean())
    assert run(losses.l1_loss, p, t) == pytest.approx(np.abs(d).mean())
    hub = np.where(np.abs(d) < 0.7, 0.5 * d**2, 0.7 * (np.abs(d) - 0.35))
    assert run(lambda p, t: losses.huber_loss(p, t, delta=0.7), p, t) == pytest.approx(hub.mean())
    sl1 = np.where(np.abs(d) < 0.5, 0.5 * d**2 / 0.5, np.abs(d) - 0.25)
    assert run(lambda p, t: losses.smooth_l1_loss(p, t, beta=0.5), p, t) == \
        pytest.approx(sl1.mean())
    sign = np.where(t > 0, 1.0, -1.0)
    assert run(losses.hinge_loss, p, sign) == pytest.approx(np.maximum(0, 1 - sign * p).mean())


def test_probability_losses_against_numpy() -> None:
    q = rng.uniform(0.05, 0.95, 6)
    y = (rng.random(6) < 0.5).astype(float)
    bce = -(y * np.log(q) + (1 - y) * np.log(1 - q))
    assert run(losses.binary_cross_entropy, q, y) == pytest.approx(bce.mean())
    z = np.log(q / (1 - q))
    pw = 3.0
    want = -(pw * y * np.log(q) + (1 - y) * np.log(1 - q))
    got = run(lambda z, y: losses.bce_with_logits(z, y, pos_weight=pw), z, y)
    assert got == pytest.approx(want.mean())
    lp = log_softmax_np(LOGITS)
    kl = (PROBS * (np.log(PROBS) - lp)).sum() / 6
    assert run(lambda i, t: losses.kl_div(i, t, reduction="batchmean"), lp, PROBS) == \
        pytest.approx(kl)
    p_t = q * y + (1 - q) * (1 - y)
    focal = (0.25 * y + 0.75 * (1 - y)) * (1 - p_t) ** 2 * bce
    assert run(losses.focal_loss, z, y) == pytest.approx(focal.mean())


def test_cosine_embedding_loss() -> None:
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    t = np.array([1.0, -1.0, 1.0, -1.0])
    cos = (a * b).sum(1) / np.sqrt(((a * a).sum(1) + 1e-8) * ((b * b).sum(1) + 1e-8))
    want = np.where(t > 0, 1 - cos, np.maximum(0, cos - 0.1))
    got = run(lambda a, b, t: losses.cosine_embedding_loss(a, b, t, margin=0.1), a, b, t)
    assert got == pytest.approx(want.mean())


def test_against_torch() -> None:
    torch = pytest.importorskip("torch", reason="PyTorch not installed: optional comparison "
                                "(`pip install torch==2.13.0`)")
    F = torch.nn.functional
    x, t = torch.tensor(LOGITS), torch.tensor(LABELS)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    for kw in ({}, {"label_smoothing": 0.2}, {"weight": w, "label_smoothing": 0.1},
               {"ignore_index": 3}, {"weight": w, "reduction": "sum"}):
        ours = run(lambda x, t, kw=kw: losses.cross_entropy(
            x, t, **{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in kw.items()}),
            LOGITS, LABELS)
        assert ours == pytest.approx(F.cross_entropy(x, t, **kw).item(), rel=1e-10), kw
    z, y = torch.tensor(LOGITS[:, 0]), torch.tensor((LABELS > 1).astype(float))
    assert run(lambda z, y: losses.bce_with_logits(z, y, pos_weight=2.0), z.numpy(), y.numpy()) \
        == pytest.approx(F.binary_cross_entropy_with_logits(
            z, y, pos_weight=torch.tensor(2.0, dtype=torch.float64)).item())
    p, q = torch.tensor(PROBS[:, 0]), torch.tensor(PROBS[:, 1])
    assert run(lambda p, q: losses.huber_loss(p, q, delta=0.1), p.numpy(), q.numpy()) == \
        pytest.approx(F.huber_loss(p, q, delta=0.1).item())
    assert run(lambda p, q: losses.smooth_l1_loss(p, q, beta=0.1), p.numpy(), q.numpy()) == \
        pytest.approx(F.smooth_l1_loss(p, q, beta=0.1).item())


def test_unknown_reduction_and_loss() -> None:
    with pytest.raises(gn.AttrError, match="reduction must be one of"):
        run(lambda p, t: losses.mse_loss(p, t, reduction="avg"), np.ones(2), np.ones(2))
    with pytest.raises(gn.AttrError, match="unknown loss 'nope'"):
        losses.get("nope")
    with pytest.raises(gn.DTypeError, match="class indices"):
        run(losses.nll_loss, LOGITS, LOGITS)


def test_metrics_against_scikit_learn() -> None:
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is in the test extra")
    y = rng.integers(0, 4, 50)
    scores = rng.standard_normal((50, 4))
    pred = scores.argmax(1)
    assert gn.metrics.accuracy(y, scores) == pytest.approx(sk.accuracy_score(y, pred))
    assert gn.metrics.precision(y, scores) == pytest.approx(
        sk.precision_score(y, pred, average="macro", zero_division=0))
    assert gn.metrics.recall(y, scores) == pytest.approx(sk.recall_score(y, pred, average="macro"))
    assert gn.metrics.f1(y, scores) == pytest.approx(sk.f1_score(y, pred, average="macro"))
    np.testing.assert_array_equal(gn.metrics.confusion_matrix(y, scores),
                                  sk.confusion_matrix(y, pred))
    assert gn.metrics.top_k_accuracy(y, scores, k=2) == pytest.approx(
        sk.top_k_accuracy_score(y, scores, k=2))
    assert gn.metrics.mean_absolute_error(y, pred) == pytest.approx(
        sk.mean_absolute_error(y, pred))
