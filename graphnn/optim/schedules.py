"""Learning-rate schedules, evaluated per epoch by the LearningRateScheduler callback.

Each schedule maps (epoch, base_lr) to a learning rate, with PyTorch's formulas
(torch.optim.lr_scheduler): StepLR, ExponentialLR, CosineAnnealingLR, LinearWarmup (LinearLR
followed by another schedule), and ReduceLROnPlateau, which reacts to a monitored metric.
"""

from __future__ import annotations

import math


class Schedule:
    def __call__(self, epoch: int, base_lr: float) -> float:
        raise NotImplementedError


class StepLR(Schedule):
    """lr = base * gamma ** (epoch // step_size)."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size, self.gamma = step_size, gamma

    def __call__(self, epoch: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """lr = base * gamma ** epoch."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def __call__(self, epoch: int, base_lr: float) -> float:
        return base_lr * self.gamma ** epoch


class CosineAnnealingLR(Schedule):
    """lr = eta_min + (base - eta_min) (1 + cos(pi epoch / T_max)) / 2  (Loshchilov & Hutter)."""

    def __init__(self, T_max: int, eta_min: float = 0.0) -> None:  # noqa: N803 - PyTorch's name
        self.T_max, self.eta_min = T_max, eta_min

    def __call__(self, epoch: int, base_lr: float) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (
            1 + math.cos(math.pi * min(epoch, self.T_max) / self.T_max)) / 2


class LinearWarmup(Schedule):
    """Ramp linearly from start_factor * base to base over warmup_epochs, then follow ``after``
    (shifted to start at 0), or stay at base.  (Goyal et al. 2017; torch LinearLR + SequentialLR)
    """

    def __init__(self, warmup_epochs: int, start_factor: float = 0.1,
                 after: Schedule | None = None) -> None:
        self.warmup_epochs, self.start_factor, self.after = warmup_epochs, start_factor, after

    def __call__(self, epoch: int, base_lr: float) -> float:
        if epoch < self.warmup_epochs:
            frac = epoch / self.warmup_epochs
            return base_lr * (self.start_factor + (1 - self.start_factor) * frac)
        return self.after(epoch - self.warmup_epochs, base_lr) if self.after else base_lr


class ReduceLROnPlateau:
    """Multiply the rate by ``factor`` after ``patience`` epochs without improvement of the
    monitored value (by more than ``threshold``, relative, as PyTorch's default "rel" mode)."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, min_lr: float = 0.0) -> None:
        if factor >= 1.0:
            raise ValueError("factor should be < 1.0")
        self.monitor, self.mode, self.factor, self.patience = monitor, mode, factor, patience
        self.threshold, self.min_lr = threshold, min_lr
        self.best: float | None = None
        self.bad_epochs = 0

    def step(self, value: float, lr: float) -> float:
        """Record this epoch's value; return the learning rate to use next."""
        better = self.best is None or (
            value < self.best * (1 - self.threshold) if self.mode == "min"
            else value > self.best * (1 + self.threshold))
        if better:
            self.best, self.bad_epochs = value, 0
            return lr
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.bad_epochs = 0
            return max(lr * self.factor, self.min_lr)
        return lr
