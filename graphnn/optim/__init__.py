"""Optimizers (update ops in the graph) and learning-rate schedules."""

from graphnn.optim.optimizers import (
    SGD,
    Adagrad,
    Adam,
    AdamW,
    Optimizer,
    RMSprop,
    TrainStep,
    get,
)
from graphnn.optim.schedules import (
    CosineAnnealingLR,
    ExponentialLR,
    LinearWarmup,
    ReduceLROnPlateau,
    Schedule,
    StepLR,
)

__all__ = [n for n in dir() if not n.startswith("_")]
