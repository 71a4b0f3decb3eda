"""Shortened main jobs, so CI catches a broken example."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

import graphnn as gn

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_digits_shortened(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    digits = load("train_digits")
    accuracy = digits.main(["--epochs", "3", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    losses = [float(line.split("loss ")[1].split()[0]) for line in out.splitlines()
              if line.startswith("epoch ")]
    assert len(losses) == 3 and losses[-1] < losses[0] * 0.5, losses
    assert accuracy > 0.90  # 3 of the 12 epochs; the full run reaches 0.98
    lines = out.rstrip().splitlines()
    assert f"test accuracy: {accuracy:.4f}" in lines
    # the ahead-of-time library gives the session's accuracy, image by image
    assert lines[-1] == f"aot test accuracy: {accuracy:.4f}"
    assert any(line.startswith("aot latency per image: ") for line in lines)
    assert (tmp_path / "libdigits.so").exists() and (tmp_path / "digits.h").exists()
    assert "confusion matrix" in out and "seconds per epoch" in out
    model = gn.load_model(tmp_path / "digits.gnn")  # the saved model runs on its own
    x_train, x_test, y_train, y_test = digits.load_data(0)
    np.testing.assert_allclose(gn.metrics.accuracy(y_test, model.predict(x_test)), accuracy)
    assert (tmp_path / "checkpoint.npz").exists()


def test_xor() -> None:
    assert load("xor").main() == 1.0


def test_iris() -> None:
    assert load("iris_mlp").main() >= 0.95


def test_train_digits_on_opencl_matches_the_reference(tmp_path: pathlib.Path) -> None:
    digits = load("train_digits")
    common = ["--epochs", "2", "--quiet", "--no-aot"]
    reference = digits.main([*common, "--out", str(tmp_path / "ref")])
    opencl = digits.main([*common, "--out", str(tmp_path / "ocl"), "--backend", "opencl"])
    assert reference > 0.85
    # the same training run: float rounding may flip at most a couple of the 360 test images
    assert abs(opencl - reference) <= 2 / 360, (opencl, reference)
