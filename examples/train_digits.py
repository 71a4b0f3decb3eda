"""The main job: a small CNN learns scikit-learn's handwritten digits (1,797 8x8 images).

    python examples/train_digits.py [--backend llvm|opencl|reference] [--epochs 12]
                                    [--out out/digits]

conv3x3(1->16)-relu-maxpool2, conv3x3(16->32)-relu-maxpool2, dense(128->10), trained with Adam on
an 80/20 stratified split (fixed seed). Prints progress, seconds per epoch and a confusion matrix,
saves a checkpoint and a saved-model file in --out, and prints ``test accuracy: <fraction>``.
Then it compiles the trained model ahead of time (``graphnn.compile``: libdigits.so and digits.h
in --out, batch 1), evaluates the library on the test split through ``graphnn.load_compiled``
and ends with ``aot test accuracy: <fraction>`` (see examples/aot/main.c for the C side).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import graphnn as gn
from graphnn import nn


def load_data(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Images as (N, 1, 8, 8) float32 in [0, 1], labels int64; 80/20 stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    return tuple(train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed))


def build_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None,
                        help="graphnn backend: llvm (the default), opencl or reference")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--out", default="out/digits", help="folder for checkpoint and model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-aot", action="store_true", help="skip the ahead-of-time library")
    args = parser.parse_args(argv)

    x_train, x_test, y_train, y_test = load_data(args.seed)
    nn.init.manual_seed(args.seed)
    model = build_model()
    print(model)
    model.compile(gn.optim.Adam(args.lr), "cross_entropy", metrics=["accuracy"],
                  backend=args.backend)
    os.makedirs(args.out, exist_ok=True)
    checkpoint = gn.ModelCheckpoint(os.path.join(args.out, "checkpoint.npz"),
                                    monitor="val_accuracy", save_best_only=True)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(x_test, y_test), callbacks=[checkpoint],
                        seed=args.seed, verbose=2 if args.quiet else 1)
    seconds = history.history["seconds"]
    print(f"seconds per epoch: {np.mean(seconds):.2f} (total {time.perf_counter() - start:.1f} s)")

    probs = model.predict(x_test)
    print("confusion matrix (rows: true digit, columns: predicted):")
    print(gn.metrics.confusion_matrix(y_test, probs, num_classes=10))
    model_path = os.path.join(args.out, "digits.gnn")
    gn.save_model(model_path, model)
    best = checkpoint.saved[-1] if checkpoint.saved else "-"
    print(f"saved model: {model_path}; best checkpoint: {best}")
    accuracy = gn.metrics.accuracy(y_test, probs)
    print(f"test accuracy: {accuracy:.4f}")
    if not args.no_aot:
        aot_accuracy(model, x_test, y_test, args.out)
    return accuracy


def aot_accuracy(model: nn.Module, x_test: np.ndarray, y_test: np.ndarray, out: str) -> float:
    """Compile ``model`` into ``out/libdigits.so`` (batch 1) and evaluate it image by image."""
    artifact = gn.compile(model, [x_test[:1]], output=os.path.join(out, "digits"))
    assert artifact.library is not None
    library = gn.load_compiled(artifact.library, threads=1)
    probs = np.concatenate([library(x_test[i:i + 1]) for i in range(len(x_test))])
    times = []
    for i in range(min(len(x_test), 200)):
        start = time.perf_counter()
        library(x_test[i:i + 1])
        times.append(time.perf_counter() - start)
    size = os.path.getsize(artifact.library)
    print(f"aot library: {artifact.library} ({size / 1024:.1f} KiB), header {artifact.header}, "
          f"compiled in {artifact.seconds:.2f} s")
    print(f"aot latency per image: {np.median(times) * 1e6:.1f} us (median of {len(times)}, "
          "1 thread, through ctypes)")
    accuracy = gn.metrics.accuracy(y_test, probs)
    print(f"aot test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
