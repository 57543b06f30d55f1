"""The features of :mod:`src.data.features`, batched in torch over many price paths.

Augmented training episodes (:mod:`src.data.augment`) are new OHLCV paths; their indicators must be
recomputed from the path itself, causally, exactly as the real data's are. :func:`path_features`
is a port of :func:`src.data.features.compute_features` to (B, S) tensors: the same formulas, the
same seeds of the exponential averages (pandas ``ewm(adjust=False)``: the first valid value), the
same fills for degenerate windows. A test holds the two equal on real bars. The value at bar ``t``
uses bars ``<= t`` of its own path only; the first :func:`src.data.features.warmup_bars` bars hold
partial look-backs and are for the caller to drop.
"""

from __future__ import annotations

import math

import torch

from src.data.features import BB_K, BB_N, MACD_FAST, MACD_SIGNAL, MACD_SLOW, RSI_N, VOL_N


def _ema(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """``y_t = alpha x_t + (1 - alpha) y_{t-1}`` along dim 1, seeded with the first column (adjust=False)."""
    out = torch.empty_like(x)
    out[:, 0] = x[:, 0]
    for t in range(1, x.shape[1]):
        out[:, t] = alpha * x[:, t] + (1 - alpha) * out[:, t - 1]
    return out


def _rolling(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std over the last ``n`` values (NaN until ``n`` are there, or if one is NaN)."""
    s = x.shape[1]
    mean = torch.full_like(x, math.nan)
    std = torch.full_like(x, math.nan)
    if s >= n:
        win = x.unfold(1, n, 1)  # (B, S - n + 1, n)
        m = win.mean(dim=2)
        mean[:, n - 1 :] = m
        std[:, n - 1 :] = ((win - m[..., None]) ** 2).mean(dim=2).sqrt()
    return mean, std


def path_features(o: torch.Tensor, h: torch.Tensor, lo: torch.Tensor, c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, S, 10) features of B OHLCV paths of S bars, in :data:`FEATURE_NAMES` order (float64 advised)."""
    nan = torch.tensor(math.nan, dtype=c.dtype, device=c.device)
    logc = c.log()
    ret_1 = torch.cat([torch.full_like(logc[:, :1], math.nan), logc.diff(dim=1)], dim=1)
    ret_5 = torch.full_like(logc, math.nan)
    ret_5[:, 5:] = logc[:, 5:] - logc[:, :-5]

    d = c.diff(dim=1)  # pandas: the first diff is NaN and ewm seeds on the first valid value
    up = _ema(d.clamp_min(0), 1 / RSI_N)
    down = _ema((-d).clamp_min(0), 1 / RSI_N)
    total = up + down
    rsi = torch.where(total > 0, 100 * up / torch.where(total > 0, total, 1.0), 50.0)
    rsi = torch.cat([torch.full_like(rsi[:, :1], 50.0), rsi], dim=1)

    macd = _ema(c, 2 / (MACD_FAST + 1)) - _ema(c, 2 / (MACD_SLOW + 1))
    signal = _ema(macd, 2 / (MACD_SIGNAL + 1))

    ma, sd = _rolling(c, BB_N)
    band = 2 * BB_K * sd
    pctb = (c - (ma - BB_K * sd)) / torch.where(band > 0, band, nan)
    pctb = torch.where(torch.isnan(pctb), torch.full_like(pctb, 0.5), pctb)

    vmean, _ = _rolling(v, VOL_N)
    vol_ratio = torch.log1p(v / torch.where(vmean > 0, vmean, nan))
    vol_ratio = torch.where(torch.isnan(vol_ratio), torch.full_like(vol_ratio, math.log(2.0)), vol_ratio)
    _, vol_20 = _rolling(ret_1, VOL_N)

    return torch.stack(
        [
            ret_1,
            ret_5,
            (h / lo).log(),
            (c / o).log(),
            (rsi - 50.0) / 50.0,
            macd / c,
            (macd - signal) / c,
            pctb,
            vol_ratio,
            vol_20,
        ],
        dim=2,
    )
