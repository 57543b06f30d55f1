"""Loader validation, causal features, chronological splits, train-only normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from src.core.errors import ConfigError, DataError
from src.data import build_market, infer_bars_per_year, load_market, load_ohlcv
from src.data.features import compute_features, warmup_bars
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
        days = days[days.day_of_week < 5]
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
    m = load_market("data/tsla_15m.csv", max_gap="5D")
    assert (m.bars_per_year, m.bars_per_day) == (26 * 252, 26)


def _stamped(csv_text: str, time_and_offset: str) -> str:
    """The daily CSV with every date written as ``<date>T<time_and_offset>``."""
    lines = csv_text.splitlines()
    return "\n".join([lines[0], *(f"{r[:10]}T{time_and_offset}{r[10:]}" for r in lines[1:])]) + "\n"


@pytest.mark.parametrize(
    "stamp", ["00:00:00+01:00", "00:00:00+09:00", "20:00:00-05:00", "16:00:00Z", "00:00:00Z", "23:00:00Z"]
)
def test_daily_bars_with_an_offset_are_annualised_in_their_own_calendar(tmp_path, csv_text, stamp):
    import warnings

    df = load_ohlcv(write_csv(tmp_path / "tz.csv", _stamped(csv_text, stamp)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated pandas calls (Timestamp.dayofweek) on the way
        m = build_market(df, name="x", source="tz.csv", data_hash="0", window=10)
    assert m.bars_per_year == 252 and m.bars_per_day == 1
    if stamp in ("00:00:00+01:00", "00:00:00+09:00", "20:00:00-05:00"):
        # in UTC these weekday bars land partly on weekends: the old weekend-share inference said 365 (x1.20)
        assert (df.index.tz_convert(None).day_of_week >= 5).mean() > 0.15


def test_an_intraday_session_across_utc_midnight_uses_its_local_dates(tmp_path):
    # Sydney's 10:00-16:00 session at +11:00 is 23:00-05:00 UTC: in UTC each session straddles two dates and
    # Sunday carries bars; in the file's own time it is 24 quarter-hours a weekday: 24 x 252 bars a year
    days = pd.bdate_range("2024-01-01", periods=60)
    stamps = [d + pd.Timedelta(hours=10) + i * pd.Timedelta(minutes=15) for d in days for i in range(24)]
    rows = [f"{t.strftime('%Y-%m-%dT%H:%M:%S')}+11:00,1,2,0.5,1.5,10" for t in stamps]
    df = load_ohlcv(write_csv(tmp_path / "asx.csv", "timestamp,open,high,low,close,volume\n" + "\n".join(rows) + "\n"))
    m = build_market(df, name="x", source="asx.csv", data_hash="0", window=10)
    assert (m.bars_per_year, m.bars_per_day) == (24 * 252, 24)
    with pytest.raises(DataError, match="set env.bars_per_year"):  # what reading the calendar in UTC would do
        build_market(df.drop(columns="utc_offset"), name="x", source="asx.csv", data_hash="0", window=10)


def test_a_sunday_to_thursday_market_trades_252_days(bars):
    days = pd.date_range("2023-01-01", periods=600, freq="D", tz="UTC")
    sun_thu = days[days.day_of_week.isin([6, 0, 1, 2, 3])][: len(bars)]  # e.g. Tadawul, or Europe written in UTC
    m = build_market(bars.iloc[: len(sun_thu)].set_axis(sun_thu), name="x", source="s", data_hash="0", window=10)
    assert m.bars_per_year == 252


def test_hourly_24_7_bars_with_an_offset(tmp_path):
    ts = pd.date_range("2024-01-01", periods=24 * 60, freq="h")
    rows = [f"{t.strftime('%Y-%m-%dT%H:%M:%S')}+09:00,1,2,0.5,1.5,10" for t in ts]
    df = load_ohlcv(write_csv(tmp_path / "h.csv", "timestamp,open,high,low,close,volume\n" + "\n".join(rows) + "\n"))
    m = build_market(df, name="x", source="h.csv", data_hash="0", window=10, min_trade=0.0)
    assert (m.bars_per_year, m.bars_per_day) == (8760, 24)


def test_an_ambiguous_calendar_is_refused_unless_bars_per_year_is_given(bars):
    # weekday bars plus a Sunday session every fourth week (e.g. an FX file with Sunday-evening opens):
    # Sunday carries a share of the bars that is neither a trading day's nor a stray session's
    days = pd.date_range("2023-01-01", periods=600, freq="D", tz="UTC")
    keep = (days.day_of_week < 5) | ((days.day_of_week == 6) & (days.isocalendar().week.to_numpy() % 4 == 0))
    fx = bars.iloc[: int(keep.sum())].set_axis(days[keep][: len(bars)])
    with pytest.raises(DataError, match="5 weekdays and irregularly on another .* set env.bars_per_year"):
        build_market(fx, name="x", source="fx.csv", data_hash="0", window=10)
    assert build_market(fx, name="x", source="fx.csv", data_hash="0", window=10, bars_per_year=260).bars_per_year == 260


# ---- header aliases, time zones, gaps, size (issue 4, part 1) ----


def _yahoo(csv_text: str, adj: bool = True) -> str:
    """The shipped format rewritten as a Yahoo export: Date, capitalised names, an Adj Close column."""
    lines = csv_text.splitlines()
    out = ["Date,Open,High,Low,Close" + (",Adj Close" if adj else "") + ",Volume"]
    for row in lines[1:]:
        ts, o, h, lo, c, v = row.split(",")
        out.append(",".join([ts, o, h, lo, c, *([str(float(c) * 0.9)] if adj else []), v]))
    return "\n".join(out) + "\n"


def test_yahoo_header_aliases_load_the_same_bars(tmp_path, csv_text):
    plain = load_ohlcv(write_csv(tmp_path / "plain.csv", csv_text))
    yahoo = load_ohlcv(write_csv(tmp_path / "yahoo.csv", _yahoo(csv_text)))
    pd.testing.assert_frame_equal(plain, yahoo)  # Adj Close ignored, close used


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: _yahoo(t).replace(",Close,", ",Unused,", 1), "has 'Adj Close' but no close column"),
        (lambda t: t.replace("timestamp,", "Date,", 1).replace(",volume", ",timestamp", 1), "both name timestamp"),
        (
            lambda t: _edit(
                t, 8, t.splitlines()[7].split(",")[0] + "T00:00:00+05:00," + t.splitlines()[7].split(",", 1)[1]
            ),
            "line 8: timestamp",
        ),
    ],
)
def test_ambiguous_headers_and_mixed_time_zones_are_refused(tmp_path, csv_text, edit, message):
    path = write_csv(tmp_path / "bad.csv", edit(csv_text))
    with pytest.raises(DataError) as e:
        load_ohlcv(path)
    assert message in str(e.value) and str(path) in str(e.value)
    if "line 8" in message:
        assert "mixed time zones" in str(e.value) and "line 2" in str(e.value)


def test_utc_offsets_are_converted(tmp_path):
    text = (
        "timestamp,open,high,low,close,volume\n"
        "2024-03-08T09:30:00-05:00,1,2,0.5,1.5,10\n"  # EST
        "2024-03-11T09:30:00-04:00,1,2,0.5,1.5,10\n"  # EDT: same session open, different offset
        "2024-03-12T13:30:00Z,1,2,0.5,1.5,10\n"
    )
    df = load_ohlcv(write_csv(tmp_path / "tz.csv", text))
    assert [str(t) for t in df.index] == [
        "2024-03-08 14:30:00+00:00",
        "2024-03-11 13:30:00+00:00",
        "2024-03-12 13:30:00+00:00",
    ]


def test_gaps_pass_up_to_max_gap_and_are_counted(tmp_path, csv_text):
    lines = csv_text.splitlines()
    del lines[100:110]  # two weeks of business days missing after line 100
    path = write_csv(tmp_path / "gap.csv", "\n".join(lines) + "\n")
    df = load_ohlcv(path, max_gap="20D")
    assert df.attrs["largest_gap"] == "15 days 00:00:00" and df.attrs["gaps"] > 1
    with pytest.raises(DataError) as e:
        load_ohlcv(path, max_gap="10D")
    assert f"{path}: line 101: 15 days 00:00:00 gap after {lines[99].split(',')[0]}" in str(e.value)
    assert "env.max_gap=10D" in str(e.value)


def test_a_huge_file_is_refused_before_reading(tmp_path, csv_text):
    path = tmp_path / "huge.csv"
    path.write_text(csv_text)
    with open(path, "r+b") as f:
        f.truncate(3 * 2**30)  # 3 GiB, sparse: costs no disk and, refused unread, no memory
    with pytest.raises(DataError, match=r"huge.csv: file is 3,072 MiB, over env.max_file_mb=1024"):
        load_ohlcv(path)


def test_too_few_rows_for_the_splits(tmp_path, csv_text):
    short = "\n".join(csv_text.splitlines()[:120]) + "\n"  # enough for the window, not for a 1% validation split
    with pytest.raises(DataError, match=r"short.csv: 119 rows are too few.*train/val/test splits get 58/0/26"):
        load_market(str(write_csv(tmp_path / "short.csv", short)), window=30, split={"train": 0.7, "val": 0.01})


def test_position_limits_are_validated_and_enforced(bars):
    with pytest.raises(ConfigError, match=r"env.position_limits must satisfy"):
        build_market(bars, name="x", source="mem", data_hash="0", window=10, position_limits=[-11, 1.0])
    with pytest.raises(ConfigError, match=r"env.position_limits must satisfy"):
        build_market(bars, name="x", source="mem", data_hash="0", window=10, position_limits=[0.2, 1.0])
    from src.envs.market_env import MarketEnv

    m = build_market(bars, name="x", source="mem", data_hash="0", window=10, position_limits=[0.0, 0.5])
    env = MarketEnv(m, "train", 3, random_start=False)
    env.reset()
    _, _, _, _, info = env.step(torch.tensor([-1.0, 0.3, 1.0]))
    assert info["position"].tolist() == pytest.approx([0.0, 0.3, 0.5])  # long-only, at most half of equity


def test_max_gap_must_be_a_duration():
    with pytest.raises(ConfigError, match="env.max_gap must be a duration like 10D or 6h, got 'soon'"):
        load_market("data/tsla_daily.csv", max_gap="soon")


def test_a_dividend_column_is_read_and_paid_on_its_ex_date(tmp_path, csv_text):
    lines = csv_text.splitlines()
    rows = [lines[0] + ",Dividends"] + [r + ("," + ("0.5" if i == 200 else "")) for i, r in enumerate(lines[1:])]
    df = load_ohlcv(write_csv(tmp_path / "div.csv", "\n".join(rows) + "\n"))
    assert df["dividend"].sum() == 0.5 and df["dividend"].iloc[200] == 0.5  # empty cells are no dividend
    m = build_market(df, name="x", source="div.csv", data_hash="0", window=10)
    k = int(np.flatnonzero(m.dividend.numpy())[0])
    assert m.bars.index[k] == df.index[200]
    assert m.dividend[k].item() == pytest.approx(0.5 / m.bars["close"].iloc[k - 1], rel=1e-6)  # over the last close
    assert "1 payment" in m.describe()["costs"]["dividends"] and m.has_income
    assert "no dividend column" in build_market(df.drop(columns="dividend"), name="x", source="s", data_hash="0",
                                                window=10).describe()["costs"]["dividends"]  # fmt: skip
    bad = [lines[0] + ",dividend"] + [r + ("," + ("-1" if i == 5 else "0")) for i, r in enumerate(lines[1:])]
    with pytest.raises(DataError, match=r"line 7: column dividend must be a number >= 0"):
        load_ohlcv(write_csv(tmp_path / "bad.csv", "\n".join(bad) + "\n"))


def test_costs_are_numbers_with_a_one_line_error():
    from src.data.costs import Costs

    with pytest.raises(ConfigError, match=r"env.costs.commission_bps must be a finite number, got 'abc'"):
        Costs(commission_bps="abc")
    with pytest.raises(ConfigError, match=r"env.costs.borrow_bps must be >= 0, got -1"):
        Costs(borrow_bps=-1)
    assert Costs(cash_rate_bps=-75).cash_rate == -0.0075  # negative deposit rates happen (EUR, CHF 2015-21)
    c = Costs(commission_bps=1, spread_bps=2, slippage_bps=1, cash_rate_bps=450, borrow_bps=30, margin_rate_bps=600)
    assert c.rate == pytest.approx(3e-4) and (c.cash_rate, c.borrow_rate, c.margin_rate) == pytest.approx(
        (0.045, 0.003, 0.06)
    )
