"""Layers: the Module API, BatchNorm's two modes, initialisers, and agreement with torch.nn
(optional) through shared state dicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphnn as gn
from graphnn import nn


def build(module: nn.Module, x: np.ndarray, train: bool = False):  # type: ignore[no-untyped-def]
    with gn.Graph() as g:
        xp = gn.placeholder(x.shape, x.dtype, name="x")
        module.train(train)
        out = module(xp)
    return g, xp, out


def forward(module: nn.Module, x: np.ndarray, train: bool = False) -> np.ndarray:
    g, xp, out = build(module, x, train)
    return gn.Session(g, backend="reference").run(out, {xp: x})


def test_linear_matches_its_formula_and_pytorch_layout() -> None:
    nn.init.manual_seed(0)
    lin = nn.Linear(4, 3)
    w, b = lin.state_dict()["weight"], lin.state_dict()["bias"]
    assert w.shape == (3, 4) and b.shape == (3,)
    assert np.all(np.abs(w) <= 1 / math.sqrt(4)) and np.all(np.abs(b) <= 1 / math.sqrt(4))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(forward(lin, x), x @ w.T + b, rtol=1e-6)


def test_module_api() -> None:
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                     "1.running_var", "4.weight", "4.bias"]
    assert [n for n, _ in model.named_parameters(trainable_only=True)] == \
        ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    assert model.count_parameters() == 40 + 8 + 144 * 2 + 2
    text = repr(model)
    assert "(0): Conv2d(1, 4, kernel_size=(3, 3)" in text and "# 40 params" in text
    assert text.rstrip().endswith("# 346 params")
    assert len(model) == 5 and isinstance(model[1], nn.BatchNorm2d)
    model.eval()
    assert not model[1].training
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_variables_are_created_once_and_shared_between_modes() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    with gn.Graph() as g:
        x = gn.placeholder((None, 3), name="x")
        model.train()
        a = model(x)
        model.eval()
        b = model(x)
    assert len(g.variables) == 2
    assert a.op == "dropout" and b.op == "add"
    with gn.Graph(), pytest.raises(gn.GraphError, match="already has variables in graph"):
        model(gn.placeholder((None, 3)))


def test_state_dict_round_trip_and_mismatch_errors() -> None:
    nn.init.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.state_dict()["weight"], a.state_dict()["weight"])
    with pytest.raises(gn.ShapeError, match=r"parameter 'weight': the model has shape \(2, 3\), "
                                            r"the state has \(4, 3\)"):
        b.load_state_dict({"weight": np.zeros((4, 3)), "bias": np.zeros(2)})
    with pytest.raises(gn.GraphError, match=r"missing \['bias'\], unexpected \['extra'\]"):
        b.load_state_dict({"weight": np.zeros((2, 3)), "extra": np.zeros(1)})
    g, x, out = build(b, np.zeros((1, 3), np.float32))
    sess = gn.Session(g, backend="reference")
    b.load_state_dict({"weight": np.ones((2, 3)), "bias": np.zeros(2)}, session=sess)
    np.testing.assert_array_equal(sess.run(out, {x: np.ones((1, 3))}), [[3, 3]])
    np.testing.assert_array_equal(b.state_dict(sess)["weight"], np.ones((2, 3)))


def test_batch_norm_train_and_eval() -> None:
    bn = nn.BatchNorm2d(3, momentum=0.2)
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32) * 2 + 1
    with gn.Graph() as g:
        xp = gn.placeholder(x.shape, name="x")
        bn.train()
        y_train = bn(xp)
        bn.eval()
        y_eval = bn(xp)
    sess = gn.Session(g, backend="reference")
    out, *_ = sess.run([y_train, *bn.update_ops()], {xp: x})
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    want = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    state = bn.state_dict(sess)
    np.testing.assert_allclose(state["running_mean"], 0.2 * mean, rtol=1e-5)
    np.testing.assert_allclose(state["running_var"], 0.8 + 0.2 * x.var(axis=(0, 2, 3), ddof=1),
                               rtol=1e-5)
    rm, rv = state["running_mean"], state["running_var"]
    want_eval = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(sess.run(y_eval, {xp: x}), want_eval, rtol=1e-5, atol=1e-6)


def test_spatial_dropout_drops_whole_channels() -> None:
    x = np.ones((8, 16, 3, 3), np.float32)
    out = forward(nn.SpatialDropout(0.5, seed=3), x, train=True)
    per_channel = out.reshape(8, 16, 9)
    assert np.all((per_channel == 0).all(axis=2) | (per_channel == 2).all(axis=2))
    assert 0 < (per_channel == 0).all(axis=2).mean() < 1
    np.testing.assert_array_equal(forward(nn.SpatialDropout(0.5), x, train=False), x)


def test_initialisers_are_seeded_and_have_their_statistics() -> None:
    nn.init.manual_seed(5)
    a = nn.init.kaiming_normal((256, 128), nonlinearity="relu")
    nn.init.manual_seed(5)
    np.testing.assert_array_equal(a, nn.init.kaiming_normal((256, 128), nonlinearity="relu"))
    assert a.std() == pytest.approx(math.sqrt(2 / 128), rel=0.03)
    assert nn.init.xavier_uniform((300, 200)).max() <= math.sqrt(6 / 500)
    assert nn.init.xavier_normal((300, 200)).std() == pytest.approx(math.sqrt(2 / 500), rel=0.03)
    assert nn.init.lecun_normal((400, 100)).std() == pytest.approx(0.1, rel=0.03)
    assert np.abs(nn.init.kaiming_uniform((64, 32, 3, 3))).max() <= math.sqrt(6 / 288)
    q = nn.init.orthogonal((6, 10))
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-5)
    assert nn.init.constant((2,), 3.0).tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="at least 2 dims"):
        nn.init.fans((3,))


def test_embedding_and_prelu() -> None:
    emb = nn.Embedding(5, 3)
    idx = np.array([[0, 4], [2, 2]])
    np.testing.assert_array_equal(forward(emb, idx), emb.state_dict()["weight"][idx])
    pr = nn.PReLU(2)
    x = np.array([[-2.0, 3.0], [4.0, -1.0]], np.float32)
    np.testing.assert_allclose(forward(pr, x), [[-0.5, 3.0], [4.0, -0.25]])


def _torch_pair(name: str):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the optional "
                                "comparison with torch.nn needs `pip install torch==2.13.0`")
    tn = torch.nn
    pairs = {
        "linear": (nn.Linear(5, 4), tn.Linear(5, 4), (3, 5)),
        "conv1d": (nn.Conv1d(2, 4, 3, stride=2, padding=1), tn.Conv1d(2, 4, 3, 2, 1), (2, 2, 9)),
        "conv2d": (nn.Conv2d(4, 6, 3, padding=1, groups=2), tn.Conv2d(4, 6, 3, padding=1,
                                                                       groups=2), (2, 4, 5, 5)),
        "conv3d": (nn.Conv3d(2, 3, 2), tn.Conv3d(2, 3, 2), (1, 2, 4, 4, 4)),
        "convt1d": (nn.ConvTranspose1d(3, 2, 3, stride=2), tn.ConvTranspose1d(3, 2, 3, 2),
                    (2, 3, 5)),
        "convt2d": (nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1),
                    tn.ConvTranspose2d(2, 4, 3, 2, 1, 1), (1, 2, 4, 4)),
        "maxpool": (nn.MaxPool2d(3, 2, 1, ceil_mode=True), tn.MaxPool2d(3, 2, 1, ceil_mode=True),
                    (2, 3, 7, 7)),
        "avgpool": (nn.AvgPool2d(2, count_include_pad=False, padding=1),
                    tn.AvgPool2d(2, padding=1, count_include_pad=False), (1, 2, 5, 5)),
        "adaptive": (nn.AdaptiveAvgPool2d(3), tn.AdaptiveAvgPool2d(3), (1, 2, 7, 8)),
        "layernorm": (nn.LayerNorm((3, 4)), tn.LayerNorm((3, 4)), (2, 3, 4)),
        "groupnorm": (nn.GroupNorm(2, 4), tn.GroupNorm(2, 4), (2, 4, 3, 3)),
        "instancenorm": (nn.InstanceNorm2d(3, affine=True), tn.InstanceNorm2d(3, affine=True),
                         (2, 3, 4, 4)),
        "rmsnorm": (nn.RMSNorm(6), tn.RMSNorm(6), (3, 6)),
        "prelu": (nn.PReLU(3), tn.PReLU(3), (2, 3, 4)),
        "batchnorm-eval": (nn.BatchNorm2d(3), tn.BatchNorm2d(3), (4, 3, 2, 2)),
        "gelu-tanh": (nn.GELU(approximate="tanh"), tn.GELU(approximate="tanh"), (3, 4)),
        "hardswish": (nn.Hardswish(), tn.Hardswish(), (3, 4)),
        "softplus": (nn.Softplus(beta=2.0), tn.Softplus(beta=2.0), (3, 4)),
    }
    return torch, pairs[name]


@pytest.mark.parametrize("name", ["linear", "conv1d", "conv2d", "conv3d", "convt1d", "convt2d",
                                  "maxpool", "avgpool", "adaptive", "layernorm", "groupnorm",
                                  "instancenorm", "rmsnorm", "prelu", "batchnorm-eval",
                                  "gelu-tanh", "hardswish", "softplus"])
def test_layer_matches_torch(name: str) -> None:
    torch, (ours, theirs, shape) = _torch_pair(name)
    rng = np.random.default_rng(0)
    state = ours.state_dict()
    if name == "batchnorm-eval":
        state = {**state, "running_mean": rng.standard_normal(3).astype(np.float32),
                 "running_var": rng.uniform(0.5, 2, 3).astype(np.float32),
                 "weight": rng.standard_normal(3).astype(np.float32)}
        ours.load_state_dict(state)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    theirs.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(forward(ours, x), want, rtol=1e-4, atol=1e-5)
