"""Causal features: the value at bar t uses only bars <= t.

Every feature is scale-free (a return, a ratio or a bounded oscillator) so one
normaliser works across a 15-year price range and across assets. Rolling and
exponential statistics use only past values (pandas ``rolling``/``ewm`` with
``adjust=False`` are causal); the first rows whose look-back is incomplete
are dropped by :func:`warmup_bars`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURE_NAMES = (
    "ret_1",  # log return close/close: the basic signal
    "ret_5",  # 5-bar log return: short momentum
    "range",  # log(high/low): intrabar volatility (Parkinson-style range)
    "body",  # log(close/open): intrabar direction
    "rsi_14",  # Wilder RSI(14) rescaled to [-1, 1]
    "macd",  # (EMA12 - EMA26) / close
    "macd_hist",  # (MACD - signal EMA9) / close
    "bb_pctb",  # Bollinger %B(20, 2)
    "volume_ratio",  # log(1 + volume / mean volume of the last 20 bars)
    "vol_20",  # 20-bar standard deviation of ret_1: realised volatility regime
)

RSI_N, MACD_FAST, MACD_SLOW, MACD_SIGNAL, BB_N, BB_K, VOL_N = 14, 12, 26, 9, 20, 2.0, 20


def warmup_bars() -> int:
    """Bars dropped at the start so that every feature has its full look-back."""
    return MACD_SLOW + MACD_SIGNAL  # the longest chain (35); > BB_N, VOL_N + 1, RSI_N + 1


def _ema(x: pd.Series, span: int) -> pd.Series:
    return x.ewm(span=span, adjust=False).mean()


def rsi(close: pd.Series, n: int = RSI_N) -> pd.Series:
    """Wilder's RSI in [0, 100]: smoothing factor 1/n, seeded with the first change (50 when flat)."""
    d = close.diff()
    up = d.clip(lower=0).ewm(alpha=1 / n, adjust=False).mean()
    down = (-d).clip(lower=0).ewm(alpha=1 / n, adjust=False).mean()
    total = up + down
    return (100 * up / total.where(total > 0)).fillna(50.0)


def compute_features(df: pd.DataFrame) -> pd.DataFrame:
    """Feature frame aligned with ``df`` (same index); early rows hold partial look-backs.

    Args:
        df: validated OHLCV frame from :func:`src.data.loader.load_ohlcv`.
    """
    o, h, lo, c, v = (df[k] for k in ("open", "high", "low", "close", "volume"))
    logc = np.log(c)
    ret_1 = logc.diff()
    macd = _ema(c, MACD_FAST) - _ema(c, MACD_SLOW)
    signal = _ema(macd, MACD_SIGNAL)
    ma = c.rolling(BB_N).mean()
    sd = c.rolling(BB_N).std(ddof=0)
    band = 2 * BB_K * sd
    pctb = ((c - (ma - BB_K * sd)) / band.where(band > 0)).fillna(0.5)
    vmean = v.rolling(VOL_N).mean()
    vol_ratio = np.log1p(v / vmean.where(vmean > 0)).fillna(np.log(2.0))
    feats = pd.DataFrame(
        {
            "ret_1": ret_1,
            "ret_5": logc.diff(5),
            "range": np.log(h / lo),
            "body": np.log(c / o),
            "rsi_14": (rsi(c) - 50.0) / 50.0,
            "macd": macd / c,
            "macd_hist": (macd - signal) / c,
            "bb_pctb": pctb,
            "volume_ratio": vol_ratio,
            "vol_20": ret_1.rolling(VOL_N).std(ddof=0),
        },
        index=df.index,
    )
    return feats[list(FEATURE_NAMES)]
