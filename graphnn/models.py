"""Small reference models, by name, for the CLI and the tests (``graphnn dump mlp``).

``digits-cnn`` is the main job's network (examples/train_digits.py); ``mlp`` the W1 benchmark's
784-512-512-10 perceptron. Weights are freshly initialised (seed 0): these build graphs to
inspect, not trained models.
"""

from __future__ import annotations

from collections.abc import Callable

from graphnn.ir import Graph, Node
from graphnn.nn import (
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Softmax,
    init,
)
from graphnn.nn.module import Module
from graphnn.ops.source import placeholder


def digits_cnn() -> tuple[Module, tuple[int, ...]]:
    return Sequential(Conv2d(1, 16, 3, padding=1), ReLU(), MaxPool2d(2),
                      Conv2d(16, 32, 3, padding=1), ReLU(), MaxPool2d(2),
                      Flatten(), Linear(128, 10)), (1, 8, 8)


def mlp() -> tuple[Module, tuple[int, ...]]:
    return Sequential(Linear(784, 512), ReLU(), Linear(512, 512), ReLU(), Linear(512, 10),
                      Softmax()), (784,)


def cnn_bn() -> tuple[Module, tuple[int, ...]]:
    """The W2 network with a batch norm, to show batch-norm folding."""
    return Sequential(Conv2d(1, 32, 3), BatchNorm2d(32), ReLU(), Conv2d(32, 64, 3), ReLU(),
                      MaxPool2d(2), Conv2d(64, 128, 3), ReLU(), MaxPool2d(2), GlobalAvgPool(),
                      Linear(128, 10)), (1, 28, 28)


MODELS: dict[str, Callable[[], tuple[Module, tuple[int, ...]]]] = {
    "digits-cnn": digits_cnn, "mlp": mlp, "cnn-bn": cnn_bn}


def inference_graph(name: str, batch: int | None = None) -> tuple[Graph, Node]:
    """The eval-mode graph of model ``name`` on input (batch, *shape), outputs set."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    init.manual_seed(0)
    model, shape = MODELS[name]()
    with Graph(name.replace("-", "_")) as g:
        x = placeholder((batch, *shape), name="x")
        model.eval()
        y = model(x)
        g.outputs = (y,)
    return g, y
