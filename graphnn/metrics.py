"""Metrics on fetched numpy values (they summarise a whole epoch, so they run outside the graph).

Classification metrics take ``y_true`` as class indices (N,) and ``y_pred`` as scores or
probabilities (N, C) or as predicted indices (N,). Precision, recall and F1 are macro averages over
the classes present in y_true or y_pred (scikit-learn's ``average="macro"``; a class with no
predicted samples has precision 0).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _labels(y_pred: np.ndarray) -> np.ndarray:
    y = np.asarray(y_pred)
    return y.argmax(axis=-1) if y.ndim > 1 else y.astype(np.int64)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples whose predicted class (argmax) equals the true one."""
    return float(np.mean(_labels(y_pred) == np.asarray(y_true).reshape(-1)))


def top_k_accuracy(y_true: np.ndarray, y_pred: np.ndarray, k: int = 5) -> float:
    """Fraction of samples whose true class is among the k highest scores."""
    top = np.argsort(-np.asarray(y_pred), axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(y_true).reshape(-1, 1), axis=1)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray,
                     num_classes: int | None = None) -> np.ndarray:
    """(C, C) counts, rows true class, columns predicted class (scikit-learn's layout)."""
    t, p = np.asarray(y_true).reshape(-1).astype(np.int64), _labels(y_pred).reshape(-1)
    c = num_classes or int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    out = np.zeros((c, c), np.int64)
    np.add.at(out, (t, p), 1)
    return out


def _per_class(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, ...]:
    cm = confusion_matrix(y_true, y_pred)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(axis=0) > 0, tp / cm.sum(axis=0), 0.0)
        recall = np.where(cm.sum(axis=1) > 0, tp / cm.sum(axis=1), 0.0)
    return precision[present], recall[present]


def precision(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-averaged precision."""
    return float(np.mean(_per_class(y_true, y_pred)[0]))


def recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-averaged recall."""
    return float(np.mean(_per_class(y_true, y_pred)[1]))


def f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-averaged F1: the mean over classes of 2 P R / (P + R) (0 where P + R = 0)."""
    p, r = _per_class(y_true, y_pred)
    with np.errstate(invalid="ignore"):
        per = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(np.mean(per))


def mean_absolute_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_pred) - np.asarray(y_true))))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "top_k_accuracy": top_k_accuracy, "precision": precision,
    "recall": recall, "f1": f1, "mae": mean_absolute_error,
    "mean_absolute_error": mean_absolute_error,
}


def get(name_or_fn: str | Callable[[np.ndarray, np.ndarray], float]
        ) -> Callable[[np.ndarray, np.ndarray], float]:
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in METRICS:
        raise ValueError(f"unknown metric {name_or_fn!r}; known: {', '.join(sorted(METRICS))}")
    return METRICS[name_or_fn]
