"""An MLP learns XOR: the smallest problem a linear model cannot solve.

    python examples/xor.py
"""

from __future__ import annotations

import numpy as np

import graphnn as gn
from graphnn import nn


def main(epochs: int = 300, verbose: int = 0) -> float:
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([0, 1, 1, 0])
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    model.compile(gn.optim.Adam(0.05), "cross_entropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=4, epochs=epochs, verbose=verbose)
    pred = model.predict(x).argmax(axis=1)
    for inputs, p in zip(x.astype(int), pred):
        print(f"{inputs[0]} xor {inputs[1]} -> {p}")
    print(f"final loss: {history.history['loss'][-1]:.5f}")
    accuracy = float(np.mean(pred == y))
    print(f"accuracy: {accuracy:.2f}")
    return accuracy


if __name__ == "__main__":
    main()
