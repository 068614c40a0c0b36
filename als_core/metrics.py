"""Accuracy metrics.

>>> rmse([1.0, 2.0], [1.0, 4.0])   # sqrt((0 + 4) / 2)
1.4142135623730951
>>> mae([1.0, 2.0], [1.0, 4.0])
1.0
"""

from __future__ import annotations

import numpy as np


def _errors(y_true, y_pred) -> np.ndarray:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: {y_true.shape} true values vs {y_pred.shape} predictions")
    if y_true.size == 0:
        raise ValueError("no ratings to score")
    return y_true - y_pred


def rmse(y_true, y_pred) -> float:
    """Root of the mean squared error."""
    return float(np.sqrt(np.mean(np.square(_errors(y_true, y_pred)))))


def mae(y_true, y_pred) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(_errors(y_true, y_pred))))
