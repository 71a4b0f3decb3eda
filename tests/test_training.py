"""fit/evaluate/predict, callbacks, checkpoints (atomic, exact resume, mismatch errors), saved
models (round trip, damaged files), non-finite losses."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import graphnn as gn
from graphnn import nn

rng = np.random.default_rng(0)
X = rng.standard_normal((64, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)


def make_model(hidden: int = 16, seed: int = 0) -> nn.Module:
    nn.init.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                          nn.Dropout(0.2), nn.Linear(hidden, 3))
    model.compile(gn.optim.Adam(0.02), "cross_entropy", metrics=["accuracy"])
    return model


def test_fit_evaluate_predict() -> None:
    model = make_model()
    history = model.fit(X, Y, batch_size=16, epochs=8, validation_split=0.25, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert history.epoch == list(range(8))
    assert history.history["loss"][-1] < history.history["loss"][0]
    result = model.evaluate(X[48:], Y[48:])
    assert result["loss"] == pytest.approx(history.history["val_loss"][-1])
    probs = model.predict(X)
    assert probs.shape == (64, 3)
    assert result["accuracy"] == pytest.approx(gn.metrics.accuracy(Y[48:], probs[48:]))


def test_resumed_training_repeats_the_uninterrupted_run(tmp_path: pathlib.Path) -> None:
    full = make_model().fit(X, Y, batch_size=16, epochs=4, verbose=0, seed=1).history["loss"]
    first = make_model()
    part = first.fit(X, Y, batch_size=16, epochs=2, verbose=0, seed=1).history["loss"]
    first.trainer.save_checkpoint(tmp_path / "ckpt.npz")
    resumed = make_model(seed=123)  # different initial weights: the checkpoint must override them
    resumed.trainer.load_checkpoint(tmp_path / "ckpt.npz", X, Y)
    rest = resumed.fit(X, Y, batch_size=16, epochs=4, initial_epoch=2, verbose=0,
                       seed=1).history["loss"]
    assert part + rest == full  # bit for bit: weights, Adam slots, BN statistics, dropout masks


def test_checkpoint_write_is_atomic(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
    model = make_model()
    model.fit(X, Y, epochs=1, verbose=0)
    path = tmp_path / "ckpt.npz"
    model.trainer.save_checkpoint(path)
    before = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        model.trainer.save_checkpoint(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]  # no temporary left behind


def test_checkpoint_mismatch_names_parameter_and_shapes(tmp_path: pathlib.Path) -> None:
    model = make_model()
    model.fit(X, Y, epochs=1, verbose=0)
    model.trainer.save_checkpoint(tmp_path / "ckpt.npz")
    other = make_model(hidden=8)
    with pytest.raises(gn.SerializationError,
                       match=r"variable '0.weight' has shape \(16, 6\) in the checkpoint but "
                             r"\(8, 6\) in the model"):
        other.trainer.load_checkpoint(tmp_path / "ckpt.npz", X, Y)
    plain = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    plain.compile("sgd")
    with pytest.raises(gn.SerializationError, match=r"missing \[.*\], unexpected \['1.bias'"):
        plain.trainer.load_checkpoint(tmp_path / "ckpt.npz", X, Y)


def test_damaged_and_foreign_files(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(gn.SerializationError, match="not a graphnn file or is damaged"):
        gn.load_model(bad)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.ones(2))
    with pytest.raises(gn.SerializationError, match="not a graphnn file"):
        gn.load_model(foreign)
    model = make_model()
    model.fit(X, Y, epochs=1, verbose=0)
    model.trainer.save_checkpoint(tmp_path / "ckpt.npz")
    with pytest.raises(gn.SerializationError, match="holds 'graphnn-checkpoint-1'"):
        gn.load_model(tmp_path / "ckpt.npz")
    with pytest.raises(gn.SerializationError, match="no such file"):
        gn.load_model(tmp_path / "missing.gnn")


def test_saved_model_runs_without_the_code(tmp_path: pathlib.Path) -> None:
    model = make_model()
    model.fit(X, Y, epochs=2, verbose=0)
    gn.save_model(tmp_path / "m.gnn", model)
    loaded = gn.load_model(tmp_path / "m.gnn")
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=1e-6)
    assert [p.name for p in loaded.inputs] == ["x"]
    assert "batch_norm" in str(loaded.graph) and "dropout" not in str(loaded.graph)
    gn.verify(loaded.graph)


def test_early_stopping_restores_the_best_weights() -> None:
    class Trainer:
        stop_training = False
        values = 0

        def variable_values(self) -> dict:
            self.values += 1
            return {"snapshot": self.values}

        class session:  # noqa: N801 - stands in for a Session
            restored: dict = {}

            @classmethod
            def load_variables(cls, values: dict) -> None:
                cls.restored = values

    stopper = gn.EarlyStopping(patience=1, restore_best_weights=True)
    stopper.trainer = Trainer()  # type: ignore[assignment]
    for epoch, loss in enumerate([1.0, 0.5, 0.6, 0.7]):
        stopper.on_epoch_end(epoch, {"val_loss": loss})
        if stopper.trainer.stop_training:
            break
    assert stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    stopper.on_train_end()
    assert Trainer.session.restored == {"snapshot": 2}


def test_early_stopping_and_checkpoint_in_fit(tmp_path: pathlib.Path) -> None:
    model = make_model()
    stop = gn.EarlyStopping(monitor="val_accuracy", patience=2)
    best = gn.ModelCheckpoint(str(tmp_path / "best-{epoch:02d}.npz"), monitor="val_accuracy",
                              save_best_only=True)
    history = model.fit(X, Y, epochs=40, validation_data=(X, Y), callbacks=[stop, best],
                        verbose=0)
    assert len(history.epoch) < 40 and stop.stopped_epoch == history.epoch[-1]
    accs = history.history["val_accuracy"]
    improving = [i + 1 for i, a in enumerate(accs) if a > max(accs[:i], default=-1)]
    assert [pathlib.Path(p).name for p in best.saved] == [f"best-{e:02d}.npz" for e in improving]


def test_learning_rate_scheduler_sets_the_rate() -> None:
    model = make_model()
    sched = gn.LearningRateScheduler(gn.optim.StepLR(1, 0.5))
    history = model.fit(X, Y, epochs=3, callbacks=[sched], verbose=0)
    assert history.history["lr"] == pytest.approx([0.02, 0.01, 0.005])
    plateau = gn.LearningRateScheduler(gn.optim.ReduceLROnPlateau("loss", patience=0,
                                                                 factor=0.5, threshold=10.0))
    history = make_model().fit(X, Y, epochs=3, callbacks=[plateau], verbose=0)
    assert history.history["lr"] == pytest.approx([0.02, 0.01, 0.005])


def test_non_finite_loss_stops_naming_the_step(capsys: pytest.CaptureFixture) -> None:
    bad = X.copy()
    bad[20] = np.inf
    with pytest.raises(gn.TrainingError, match=r"loss became nan at epoch 1, step 2"):
        make_model().fit(bad, Y, batch_size=16, shuffle=False, verbose=0)
    make_model().fit(bad, Y, batch_size=16, shuffle=False, verbose=0, stop_on_nan=False)
    assert "warning: loss became nan at epoch 1, step 2" in capsys.readouterr().out


def test_fit_checks_inputs() -> None:
    with pytest.raises(ValueError, match="x has 64 samples but y has 3"):
        make_model().fit(X, Y[:3], verbose=0)
    with pytest.raises(gn.GraphError, match="call Sequential.compile"):
        nn.Sequential(nn.Linear(2, 2)).fit(X, Y)
