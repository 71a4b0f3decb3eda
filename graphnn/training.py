"""High-level training: ``model.compile(optimizer, loss, metrics)``, then ``fit``, ``evaluate``,
``predict`` (Keras's API, on graphnn Modules), with callbacks and a per-epoch progress bar.

The Trainer builds one graph: placeholders for a batch of inputs and targets, the model in
training mode with its loss, gradients and optimizer update (one ``run`` per step), and the model
in eval mode with its loss, sharing the same variables. Epoch order is a function of (seed, epoch)
and the dropout masks of the session's run counter, so training resumed from a checkpoint repeats
the uninterrupted run exactly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphnn import losses as losses_mod
from graphnn import metrics as metrics_mod
from graphnn.dtypes import as_dtype
from graphnn.errors import GraphError, TrainingError
from graphnn.io.checkpoint import load_checkpoint, save_checkpoint
from graphnn.ir import Graph, Node
from graphnn.nn.module import Module
from graphnn.ops import api as F
from graphnn.optim import optimizers as optim_mod
from graphnn.optim.schedules import ReduceLROnPlateau, Schedule
from graphnn.session import Session


class History:
    """Per-epoch logs: ``history.history["loss"]``, ``["val_accuracy"]``, ... and ``epoch``."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def record(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)


class Callback:
    """Hooks called by ``fit``; ``self.trainer`` is set before training starts."""

    trainer: Trainer

    def on_train_begin(self) -> None: ...
    def on_epoch_begin(self, epoch: int) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...
    def on_train_end(self) -> None: ...


def _improved(mode: str, value: float, best: float | None, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _mode(monitor: str, mode: str) -> str:
    if mode != "auto":
        return mode
    return "max" if any(k in monitor for k in ("acc", "f1", "precision", "recall")) else "min"


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs; with
    ``restore_best_weights``, end with the weights of the best epoch.  Ref: keras EarlyStopping"""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", restore_best_weights: bool = False) -> None:
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), patience
        self.mode, self.restore = _mode(monitor, mode), restore_best_weights
        self.best: float | None = None
        self.best_epoch = -1
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._best_weights: dict[Node, np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = _monitored(logs, self.monitor)
        if _improved(self.mode, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore:
                self._best_weights = self.trainer.variable_values()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.trainer.stop_training = True
            self.stopped_epoch = epoch

    def on_train_end(self) -> None:
        if self.restore and self._best_weights is not None and self.stopped_epoch is not None:
            session = self.trainer.session
            assert session is not None
            session.load_variables(self._best_weights)


class ModelCheckpoint(Callback):
    """Write a checkpoint after each epoch, or only when ``monitor`` improves (save_best_only).

    ``filepath`` may contain ``{epoch}`` and log keys (``ckpt-{epoch:02d}-{val_loss:.3f}.npz``).
    """

    def __init__(self, filepath: str, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto") -> None:
        self.filepath, self.monitor, self.save_best_only = filepath, monitor, save_best_only
        self.mode = _mode(monitor, mode)
        self.best: float | None = None
        self.saved: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.save_best_only:
            value = _monitored(logs, self.monitor)
            if not _improved(self.mode, value, self.best, 0.0):
                return
            self.best = value
        path = self.filepath.format(epoch=epoch + 1, **logs)
        self.trainer.save_checkpoint(path, epoch=epoch + 1)
        self.saved.append(path)


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch's start from ``schedule(epoch, base_lr)`` (a Schedule
    or a function), or, for ReduceLROnPlateau, from the monitored value at each epoch's end."""

    def __init__(self, schedule: Schedule | ReduceLROnPlateau | Callable[[int, float], float]
                 ) -> None:
        self.schedule = schedule

    def on_epoch_begin(self, epoch: int) -> None:
        if not isinstance(self.schedule, ReduceLROnPlateau):
            opt = self.trainer.optimizer
            opt.set_lr(self.trainer.session, float(self.schedule(epoch, opt.base_lr)))

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        opt = self.trainer.optimizer
        if isinstance(self.schedule, ReduceLROnPlateau):
            lr = opt.get_lr(self.trainer.session)
            opt.set_lr(self.trainer.session,
                       self.schedule.step(_monitored(logs, self.schedule.monitor), lr))
        logs["lr"] = opt.get_lr(self.trainer.session)


def _monitored(logs: dict[str, float], key: str) -> float:
    if key not in logs:
        raise KeyError(f"monitored value {key!r} is not in the logs ({', '.join(logs)}); "
                       "validation values need validation_data or validation_split")
    return logs[key]


class Trainer:
    """Training state of one model: graph, session, optimizer (see ``Module.compile``)."""

    def __init__(self, model: Module, optimizer: str | optim_mod.Optimizer = "adam",
                 loss: str | Callable[..., Node] = "cross_entropy",
                 metrics: Sequence[str | Callable[..., float]] = (), backend: str | None = None,
                 loss_kwargs: dict[str, Any] | None = None, opt_level: int = 0) -> None:
        self.model = model
        self.optimizer = optim_mod.get(optimizer)
        self.loss_fn = losses_mod.get(loss)
        self.loss_kwargs = loss_kwargs or {}
        self.metric_names = [m if isinstance(m, str) else m.__name__ for m in metrics]
        self.metric_fns = [metrics_mod.get(m) for m in metrics]
        self.backend, self.opt_level = backend, opt_level
        self.session: Session | None = None  # type: ignore[assignment]
        self.stop_training = False
        self.epochs_done = 0

    # -- graph -----------------------------------------------------------------------------------
    def build(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        """Build the training and evaluation graph for inputs like ``x`` and targets like ``y``."""
        if self.session is not None:
            return
        graph = Graph("training")
        with graph:
            self.x = F.placeholder((None, *x.shape[1:]), _feed_dtype(x), name="x")
            y_like = y if y is not None else np.zeros((1,), np.int64)
            self.y = F.placeholder((None, *y_like.shape[1:]), _feed_dtype(y_like), name="y")
            for _, m in self.model.named_modules():
                m._updates.clear()
            self.model.train()
            self.train_output = self.model(self.x)
            self.train_loss = self.loss_fn(self.train_output, self.y, **self.loss_kwargs)
            params = [p.node for p in self.model.parameters() if p.node is not None]
            self.step = self.optimizer.build(self.train_loss, params)
            updates = self.model.update_ops()
            self.apply = F.group(self.step.apply, *updates) if updates else self.step.apply
            self.model.eval()
            self.eval_output = self.model(self.x)
            self.eval_loss = self.loss_fn(self.eval_output, self.y, **self.loss_kwargs)
            graph.outputs = (self.eval_output,)
        self.graph = graph
        self.session = Session(graph, self.backend, opt_level=self.opt_level)
        self._micro = 0

    def variable_values(self) -> dict[Node, np.ndarray]:
        assert self.session is not None
        nodes = self.graph.variables
        return dict(zip(nodes, self.session.run(nodes)))

    # -- training --------------------------------------------------------------------------------
    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 32, epochs: int = 1,
            validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            validation_split: float = 0.0, callbacks: Sequence[Callback] = (),
            shuffle: bool = True, seed: int = 0, verbose: int = 1, initial_epoch: int = 0,
            stop_on_nan: bool = True) -> History:
        """Train for ``epochs`` (counting from ``initial_epoch``, to resume from a checkpoint).

        ``validation_split`` holds out the last fraction of (x, y) before shuffling, as Keras.
        verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
        Raises:  TrainingError naming epoch and step when the loss is not finite (unless
                 stop_on_nan=False, which only warns).
        """
        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if validation_data is None and validation_split:
            cut = int(len(x) * (1 - validation_split))
            x, y, validation_data = x[:cut], y[:cut], (x[cut:], y[cut:])
        self.build(x, y)
        history = History()
        self.stop_training = False
        for cb in callbacks:
            cb.trainer = self
            cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            start = time.perf_counter()
            logs = self._train_epoch(x, y, batch_size, epoch, epochs, shuffle, seed, verbose,
                                     stop_on_nan)
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
                logs.update({f"val_{k}": v for k, v in val.items()})
            logs["seconds"] = time.perf_counter() - start
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            history.record(epoch, logs)
            self.epochs_done = epoch + 1
            if verbose:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "seconds")
                print(f"epoch {epoch + 1}/{epochs}  {shown}  ({logs['seconds']:.2f} s)")
            if self.stop_training:
                break
        for cb in callbacks:
            cb.on_train_end()
        return history

    def _train_epoch(self, x: np.ndarray, y: np.ndarray, batch_size: int, epoch: int,
                     epochs: int, shuffle: bool, seed: int, verbose: int,
                     stop_on_nan: bool) -> dict[str, float]:
        assert self.session is not None
        order = (np.random.default_rng([seed, epoch]).permutation(len(x)) if shuffle
                 else np.arange(len(x)))
        batches = [order[i:i + batch_size] for i in range(0, len(x), batch_size)]
        bar = _progress(batches, epoch, epochs, verbose)
        total, outputs, targets = 0.0, [], []
        k = self.step.steps_per_update
        for step, idx in enumerate(bar):
            self._micro += 1
            op = self.apply if self._micro % k == 0 or self.step.accumulate is None \
                else self.step.accumulate
            _, loss, out = self.session.run([op, self.train_loss, self.train_output],
                                            {self.x: x[idx], self.y: y[idx]})
            if not np.isfinite(loss):
                msg = (f"loss became {float(loss)} at epoch {epoch + 1}, step {step + 1}; "
                       "try a lower learning rate or gradient clipping")
                if stop_on_nan:
                    raise TrainingError(msg)
                print(f"warning: {msg}")
            total += float(loss) * len(idx)
            outputs.append(out)
            targets.append(y[idx])  # metrics compare in the shuffled order of the outputs
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / sum(len(b) for b in batches[:step + 1]):.4f}")
        logs = {"loss": total / len(x)}
        preds, seen = np.concatenate(outputs), np.concatenate(targets)
        logs.update({n: fn(seen, preds) for n, fn in zip(self.metric_names, self.metric_fns)})
        return logs

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> dict[str, float]:
        """Loss (mean over samples) and metrics in eval mode."""
        x, y = np.asarray(x), np.asarray(y)
        self.build(x, y)
        assert self.session is not None
        total, outputs = 0.0, []
        for i in range(0, len(x), batch_size):
            loss, out = self.session.run([self.eval_loss, self.eval_output],
                                         {self.x: x[i:i + batch_size], self.y: y[i:i + batch_size]})
            total += float(loss) * len(out)
            outputs.append(out)
        preds = np.concatenate(outputs)
        logs = {"loss": total / max(len(x), 1)}
        logs.update({n: fn(y, preds) for n, fn in zip(self.metric_names, self.metric_fns)})
        return logs

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The eval-mode output for every sample of x."""
        x = np.asarray(x)
        self.build(x)
        assert self.session is not None
        parts = [self.session.run(self.eval_output, {self.x: x[i:i + batch_size]})
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts)

    # -- state -----------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike[str], **meta: Any) -> None:
        """All training state (weights, buffers, optimizer slots, run counter), atomically."""
        if self.session is None:
            raise GraphError("nothing to save before the model is built (call fit first)")
        save_checkpoint(path, self.session, epochs_done=self.epochs_done, **meta)

    def load_checkpoint(self, path: str | os.PathLike[str], x: np.ndarray, y: np.ndarray
                        ) -> dict[str, Any]:
        """Restore a checkpoint into this trainer (built for data like x, y); returns its meta."""
        self.build(np.asarray(x), np.asarray(y))
        assert self.session is not None
        meta = load_checkpoint(path, self.session)
        self.epochs_done = int(meta.get("epochs_done", 0))
        return meta


def _feed_dtype(a: np.ndarray) -> Any:
    if a.dtype.kind == "f":
        return "float32"  # float64 data trains in float32, as Keras and PyTorch defaults
    if a.dtype.kind in "iu":
        return "int64"
    return as_dtype(a.dtype)


def _progress(batches: list[np.ndarray], epoch: int, epochs: int, verbose: int) -> Any:
    if verbose != 1:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                dynamic_ncols=True, mininterval=0.5)
