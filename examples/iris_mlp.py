"""An MLP classifies scikit-learn's iris flowers (150 samples, 4 features, 3 species).

    python examples/iris_mlp.py
"""

from __future__ import annotations

import numpy as np

import graphnn as gn
from graphnn import nn


def main(epochs: int = 100, verbose: int = 0) -> float:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float32), data.target, test_size=0.3, stratify=data.target,
        random_state=0)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std  # statistics of train only
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    model.compile(gn.optim.Adam(0.01), "cross_entropy", metrics=["accuracy", "f1"])
    model.fit(x_train, y_train, batch_size=16, epochs=epochs, verbose=verbose, seed=0)
    result = model.evaluate(x_test, y_test)
    print(f"test loss {result['loss']:.4f}, macro F1 {result['f1']:.4f}")
    print(f"test accuracy: {result['accuracy']:.4f}")
    return result["accuracy"]


if __name__ == "__main__":
    main()
