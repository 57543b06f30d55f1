"""Learning-curve extrapolation for early stopping: fit, predict, decide. Pure functions, no Lightning.

Validation loss is fitted with an exponential decay ``a·exp(−b·t) + c`` and validation Sharpe with a
logarithmic growth ``a·log(1 + b·t) + c`` (``scipy.optimize.curve_fit``, bounded), where ``t`` is the
fraction of the run's step budget, so both are extrapolated to ``t = 1``: the end of the budget. When a
fit fails (too few points, no convergence, a non-finite result) the prediction falls back to the mean of
the last three points, and says so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np


def exp_decay(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.exp(-b * t) + c


def log_growth(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.log1p(b * t) + c


CURVES = {"exp_decay": exp_decay, "log_growth": log_growth}


@dataclass(frozen=True)
class CurveFit:
    """One fitted curve and its extrapolation to ``t_end``."""

    kind: str
    params: tuple[float, float, float]  # (a, b, c); NaN when the fit failed
    prediction: float
    ok: bool
    message: str = ""


def _fallback(kind: str, y: np.ndarray, why: str) -> CurveFit:
    return CurveFit(kind, (math.nan,) * 3, float(np.mean(y[-3:])), False, f"fit failed ({why}): mean of the last 3")


def fit_curve(kind: str, t: np.ndarray, y: np.ndarray, t_end: float = 1.0) -> CurveFit:
    """Fit ``kind`` (``exp_decay`` or ``log_growth``) to points ``(t, y)`` and predict ``y(t_end)``.

    Bounds keep the fit well posed: rate ``b`` in [1e-3, 1e3] (``t`` is a budget fraction), amplitude
    ``|a|`` and offset ``|c|`` within 100 times the data's range and scale. Either sign of ``a`` is
    allowed, so a falling Sharpe or a rising loss is fitted as such, not forced into the hoped-for shape.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    if kind not in CURVES:
        raise ValueError(f"unknown curve {kind!r}; one of {sorted(CURVES)}")
    t, y = np.asarray(t, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(t) != len(y):
        raise ValueError(f"t has {len(t)} points, y has {len(y)}")
    if len(t) < 4:
        return _fallback(kind, y, f"{len(t)} points, need 4")
    if not np.all(np.isfinite(y)):
        return _fallback(kind, y[np.isfinite(y)] if np.isfinite(y).any() else np.zeros(1), "non-finite values")
    span = float(np.ptp(y)) or 1e-6
    scale = 100 * max(span, float(np.abs(y).max()), 1e-6)
    p0 = (y[0] - y[-1], 3.0, y[-1]) if kind == "exp_decay" else (span / math.log1p(10.0), 10.0, y[0])
    lo, hi = (-scale, 1e-3, -scale), (scale, 1e3, scale)
    p0 = tuple(float(np.clip(p, a, b)) for p, a, b in zip(p0, lo, hi, strict=True))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(CURVES[kind], t, y, p0=p0, bounds=(lo, hi), maxfev=5000)
    except (RuntimeError, ValueError) as e:
        return _fallback(kind, y, str(e).splitlines()[0][:80])
    pred = float(CURVES[kind](np.float64(t_end), *params))
    if not math.isfinite(pred):
        return _fallback(kind, y, "non-finite prediction")
    return CurveFit(kind, tuple(float(p) for p in params), pred, True)


def stalled(values: list[float], patience: int, min_delta: float = 0.0) -> bool:
    """True when the best value is at least ``patience`` evaluations old (no improvement > ``min_delta``)."""
    if len(values) <= patience:
        return False
    best_before = max(values[:-patience])
    return max(values[-patience:]) <= best_before + min_delta
