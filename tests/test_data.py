"""Loader validation, causal features, chronological splits, train-only normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.data import build_market, infer_bars_per_year, load_market, load_ohlcv
from src.data.features import compute_features, warmup_bars
from src.errors import DataError
from tests.conftest import ROOT, write_csv


def _edit(text: str, line: int, new: str) -> str:
    lines = text.splitlines()
    lines[line - 1] = new
    return "\n".join(lines) + "\n"


def test_shipped_files_load():
    for name, rows in (("tsla_daily", 4052), ("tsla_15m", 23356), ("btcusdt_1h", 29302)):
        df = load_ohlcv(ROOT / "data" / f"{name}.csv")
        assert len(df) == rows and df.index.is_monotonic_increasing and str(df.index.tz) == "UTC"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: _edit(t, 5, "2000-01-05,1,2,0.5,1.5,100"),
            "line 5: duplicate timestamp 2000-01-05 (first on line 4)",
        ),
        (lambda t: _edit(t, 7, "not-a-date,1,2,0.5,1.5,100"), "line 7: unparsable timestamp 'not-a-date'"),
        (lambda t: _edit(t, 6, "1999-01-01,1,2,0.5,1.5,100"), "line 6: timestamp 1999-01-01 is not after"),
        (
            lambda t: _edit(t, 9, t.splitlines()[8].rsplit(",", 2)[0] + ",nan,100"),
            "line 9: column close has non-numeric",
        ),
        (lambda t: _edit(t, 9, t.splitlines()[8].rsplit(",", 2)[0] + ",inf,100"), "line 9: column close"),
        (lambda t: _edit(t, 10, t.splitlines()[9].rsplit(",", 1)[0] + ","), "line 10: column volume"),
        (lambda t: _edit(t, 11, t.splitlines()[10].split(",")[0] + ",-1,2,0.5,1.5,100"), "line 11: non-positive open"),
        (
            lambda t: _edit(t, 12, t.splitlines()[11].split(",")[0] + ",1,0.5,2,1,100"),
            "line 12: high 0.5 is below low 2",
        ),
        (lambda t: _edit(t, 13, t.splitlines()[12].split(",")[0] + ",1,2,0.5,3,100"), "line 13: close 3.0 is outside"),
        (lambda t: _edit(t, 14, t.splitlines()[13].split(",")[0] + ",1,2,0.5,1.5,-5"), "line 14: negative volume"),
        (lambda t: t.replace("volume", "vol", 1), "missing column(s) volume"),
        (lambda t: t.splitlines()[0] + "\n", "no data rows (header only)"),
        (lambda t: "", "file is empty"),
    ],
)
def test_bad_files_are_refused_with_file_line_and_problem(tmp_path, csv_text, edit, message):
    path = write_csv(tmp_path / "bad.csv", edit(csv_text))
    with pytest.raises(DataError) as e:
        load_ohlcv(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"timestamp,open\n\xff\xfe\x00\x81")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        load_ohlcv(path)


def test_too_few_rows_for_the_window(tmp_path, csv_text):
    short = "\n".join(csv_text.splitlines()[:80]) + "\n"
    with pytest.raises(DataError, match="too few"):
        load_market(str(write_csv(tmp_path / "short.csv", short)), window=30)


def test_features_are_causal(bars):
    """Changing every bar after t leaves every feature at bars <= t unchanged."""
    base = compute_features(bars)
    t = 150
    future = bars.copy()
    rng = np.random.default_rng(0)
    scale = np.exp(rng.normal(0, 0.2, len(bars) - t - 1))
    for c in ("open", "high", "low", "close"):
        future.iloc[t + 1 :, future.columns.get_loc(c)] *= scale
    future.iloc[t + 1 :, future.columns.get_loc("volume")] *= 7
    changed = compute_features(future)
    pd.testing.assert_frame_equal(base.iloc[: t + 1], changed.iloc[: t + 1])
    assert not np.allclose(base.iloc[t + 1 :].to_numpy(), changed.iloc[t + 1 :].to_numpy())


def test_features_complete_after_warmup(bars):
    f = compute_features(bars)
    assert not f.iloc[warmup_bars() :].isna().any().any()


def test_rsi_and_pctb_against_hand_values():
    close = pd.Series([10.0, 11.0, 10.0, 12.0], index=pd.RangeIndex(4))
    df = pd.DataFrame({"open": close, "high": close + 1, "low": close - 1, "close": close, "volume": 1.0})
    f = compute_features(df)
    # Changes +1, -1, +2; Wilder smoothing a = 1/14 seeded with the first change:
    # up = 1, 13/14, 13/14 * 13/14 + 2/14; down = 0, 1/14, 13/14 * 1/14.
    up3 = (13 / 14) ** 2 + 2 / 14
    dn3 = 13 / 14 / 14
    rsi3 = 100 * up3 / (up3 + dn3)
    assert f["rsi_14"].iloc[3] == pytest.approx((rsi3 - 50) / 50)
    assert f["ret_1"].iloc[3] == pytest.approx(np.log(12 / 10))
    assert f["range"].iloc[0] == pytest.approx(np.log(11 / 9))


def test_splits_are_chronological_and_normalisation_uses_train_only(bars):
    m = build_market(bars, name="x", source="mem", data_hash="0", window=10)
    (a0, a1), (b0, b1), (c0, c1) = (m.splits[s] for s in ("train", "val", "test"))
    assert a0 == 0 and a1 == b0 and b1 == c0 and c1 == len(m.bars)
    assert m.bars.index[a1 - 1] < m.bars.index[b0] < m.bars.index[c0]
    assert (a1, b1 - b0) == (int(0.7 * len(m.bars)), int(0.15 * len(m.bars)))
    # Replacing everything after the train split changes neither the statistics nor any train feature.
    wild = bars.copy()
    cut = warmup_bars() + a1
    wild.iloc[cut:, :4] *= 3.0
    wild.iloc[cut:, 4] *= 10
    m2 = build_market(wild, name="x", source="mem", data_hash="1", window=10)
    np.testing.assert_array_equal(m.norm_mean, m2.norm_mean)
    np.testing.assert_array_equal(m.norm_std, m2.norm_std)
    np.testing.assert_array_equal(m.features[:a1].numpy(), m2.features[:a1].numpy())
    z = m.features[:a1].numpy()
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)


def test_fill_returns(bars):
    m = build_market(bars, name="x", source="mem", data_hash="0", window=10)
    o, c = m.bars["open"].to_numpy(), m.bars["close"].to_numpy()
    np.testing.assert_allclose(m.pre[1:].numpy(), o[1:] / c[:-1] - 1, rtol=1e-5)
    np.testing.assert_allclose(m.post[1:].numpy(), c[1:] / o[1:] - 1, rtol=1e-5)
    mc = build_market(bars, name="x", source="mem", data_hash="0", window=10, fill="close")
    np.testing.assert_allclose(mc.pre.numpy(), 0)
    np.testing.assert_allclose(mc.post[1:].numpy(), c[1:] / c[:-1] - 1, rtol=1e-5)


@pytest.mark.parametrize(
    ("freq", "weekends", "per_day", "expected"),
    [("1D", False, 1, 252), ("1D", True, 1, 365), ("1h", True, 24, 8760), ("15min", False, 26, 26 * 252)],
)
def test_bars_per_year(freq, weekends, per_day, expected):
    days = pd.date_range("2024-01-01", periods=60, freq="D", tz="UTC")
    if not weekends:
        days = days[days.dayofweek < 5]
    if per_day == 1:
        ts = days
    else:
        step = pd.Timedelta(freq)
        ts = pd.DatetimeIndex(
            [
                d + pd.Timedelta(hours=13, minutes=30) * int(per_day < 24) + i * step
                for d in days
                for i in range(per_day)
            ]
        )
    assert infer_bars_per_year(ts) == pytest.approx(expected)


def test_shipped_bar_sizes():
    assert load_market("data/tsla_daily.csv").bars_per_year == 252
    assert load_market("data/btcusdt_1h.csv").bars_per_year == 8760
