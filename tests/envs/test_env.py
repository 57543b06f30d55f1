"""Env accounting against a hand-computed example, termination vs truncation, causal observations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from src.data.market import Costs, Market
from src.data.synthetic import synthetic_market
from src.envs.market_env import MarketEnv, all_windows

OPEN = [100.0, 102.0, 103.0, 99.0, 100.0, 111.0]
CLOSE = [100.0, 104.0, 101.0, 100.0, 110.0, 108.0]


def hand_market(
    fill: str = "open", min_trade: float = 0.0, window: int = 1, costs: dict | None = None, **extra
) -> Market:
    """Six bars with a 1-bar window: decisions on bars 0..4 realise bars 1..5 (10 bps per unit traded)."""
    o, c = np.array(OPEN), np.array(CLOSE)
    pre, post = np.zeros(6), np.zeros(6)
    if fill == "open":
        pre[1:], post[1:] = o[1:] / c[:-1] - 1, c[1:] / o[1:] - 1
    else:
        post[1:] = c[1:] / c[:-1] - 1
    idx = pd.date_range("2024-01-01", periods=6, tz="UTC")
    bars = pd.DataFrame(
        {"open": o, "high": np.maximum(o, c), "low": np.minimum(o, c), "close": c, "volume": 1.0}, index=idx
    )
    feats = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 2)  # feature row t = (t, t)
    return Market(
        name="hand",
        source="hand",
        data_hash="0",
        bars=bars,
        features=feats,
        pre=torch.tensor(pre, dtype=torch.float32),
        post=torch.tensor(post, dtype=torch.float32),
        splits={"train": (0, 6), "val": (0, 6), "test": (0, 6)},
        window=window,
        costs=Costs(commission_bps=5, spread_bps=4, slippage_bps=3, **(costs or {})),
        fill=fill,
        bars_per_year=252,
        episode_length=100,
        min_trade=min_trade,
        min_equity=0.05,
        norm_mean=np.zeros(2),
        norm_std=np.ones(2),
        **extra,
    )


ACTIONS = [1.0, 1.0, -0.5, 0.0, 0.5]


def run(market: Market, actions=ACTIONS) -> list[dict]:
    env = MarketEnv(market, "train", 1, random_start=False)
    env.reset()
    out = []
    for a in actions:
        _, r, term, trunc, info = env.step(torch.tensor([a]))
        out.append(
            {k: float(v[0]) for k, v in info.items()}
            | {"reward": float(r[0]), "term": bool(term[0]), "trunc": bool(trunc[0])}
        )
    return out


def test_five_bar_accounting_with_costs_fill_at_open():
    rate = (5 + 4 / 2 + 3) / 1e4  # commission + half the spread + slippage = 10 bps
    steps = run(hand_market())
    # bar 1: buy 1.0 at the open 102 (from flat), hold to the close 104
    g1 = (104 / 102) * (1 - 1.0 * rate)
    # bar 2: hold 1.0: gap 104 -> 103 and 103 -> 101, no trade
    g2 = 101 / 104
    # bar 3: gap 101 -> 99 on 1.0, sell to -0.5 at 99 (turnover 1.5), -0.5 on 99 -> 100
    g3 = (99 / 101) * (1 - 1.5 * rate) * (1 - 0.5 * (100 / 99 - 1))
    w3 = -0.5 * (100 / 99) / (1 - 0.5 * (100 / 99 - 1))  # the short's weight drifts as the price rises
    # bar 4: no gap (open 100 = close 100); cover the drifted short to 0 at the open; flat on 100 -> 110
    g4 = 1 - abs(w3) * rate
    # bar 5: buy 0.5 at 111 (after the 110 -> 111 gap, earned by nobody), 111 -> 108
    g5 = (1 - 0.5 * rate) * (1 + 0.5 * (108 / 111 - 1))
    growth = [g1, g2, g3, g4, g5]
    turnover = [1.0, 0.0, 1.5, abs(w3), 0.5]
    positions = [1.0, 1.0, -0.5, 0.0, 0.5]
    for s, g, tv, p in zip(steps, growth, turnover, positions, strict=True):
        assert s["net_return"] == pytest.approx(g - 1, abs=1e-6)
        assert s["reward"] == pytest.approx(np.log(g), abs=1e-6)
        assert s["turnover"] == pytest.approx(tv, abs=1e-6)
        assert s["position"] == pytest.approx(p, abs=1e-6)
        assert s["net_return"] == pytest.approx(s["gross_return"] - s["cost"], abs=1e-7)
    assert steps[2]["gross_return"] == pytest.approx((99 / 101) * (1 - 0.5 * (100 / 99 - 1)) - 1, abs=1e-6)
    assert steps[-1]["equity"] == pytest.approx(np.prod(growth), rel=1e-6)
    assert [s["trunc"] for s in steps] == [False] * 4 + [True]  # the end of the data truncates
    assert not any(s["term"] for s in steps)


FINANCED = {"cash_rate_bps": 400, "borrow_bps": 100, "margin_rate_bps": 600}  # 4%, 1% and 6% a year
# Thu, Fri, then Mon (a weekend: three days of interest), Tue, Wed, Thu
DATES = pd.DatetimeIndex(["2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11"], tz="UTC")


def financed_market(fill: str = "open") -> Market:
    """The hand market with financing, leverage up to 2, and a $1 dividend going ex on Monday (bar 2)."""
    from src.data.costs import accrual_years

    div = np.array([0, 0, 1.0 / 104, 0, 0, 0])  # $1 on bar 2, over bar 1's close of 104
    m = hand_market(fill, costs=FINANCED, position_limits=(-2.0, 2.0))
    m.bars.index = DATES
    m.dividend = torch.tensor(div, dtype=torch.float32)
    m.accrual = torch.tensor(accrual_years(DATES), dtype=torch.float32)
    return m


def test_financing_and_dividends_hand_computed():
    rate, cash, borrow, margin = 10 / 1e4, 0.04, 0.01, 0.06
    day, weekend = 1 / 365, 3 / 365
    steps = run(financed_market(), [1.0, 2.0, -0.5, 0.0, 0.5])
    # bar 1 (Thu -> Fri): flat cash earns a day's interest; then buy 1.0 at 102, hold to 104
    fin1 = cash * day
    g1 = (1 + fin1) * (1 - rate) * (104 / 102)
    # bar 2 (over the weekend; ex-dividend Monday): 1.0 held pays no interest (no cash) and receives $1 on 104;
    # the open drops 104 -> 103 by the dividend, so equity is unchanged before the fill: 1 - 1/104 + 1/104
    div2 = 1 / 104
    a2 = 1 + (103 / 104 - 1) + div2
    w2 = (103 / 104) / a2  # the dividend went to cash: the weight drifts below 1
    g2 = a2 * (1 - (2.0 - w2) * rate) * (1 + 2.0 * (101 / 103 - 1))  # lever up to 2 at 103, hold to 101
    p3 = 2.0 * (101 / 103) / (1 + 2.0 * (101 / 103 - 1))  # the levered weight drifts (above 2)
    # bar 3 (Tue): borrowed cash p3 - 1 pays the margin rate for a day; gap 101 -> 99; sell to -0.5 at 99
    fin3 = -margin * (p3 - 1) * day
    a3 = 1 + p3 * (99 / 101 - 1) + fin3
    w3 = p3 * (99 / 101) / a3
    g3 = a3 * (1 - abs(-0.5 - w3) * rate) * (1 - 0.5 * (100 / 99 - 1))
    p4 = -0.5 * (100 / 99) / (1 - 0.5 * (100 / 99 - 1))
    # bar 4 (Wed): the short pays the borrow fee on its value; cash 1 - p4 (proceeds included) earns interest
    fin4 = (cash * (1 - p4) - borrow * abs(p4)) * day
    a4 = 1 + fin4  # no gap (open 100 = close 100)
    g4 = a4 * (1 - abs(p4 / a4) * rate)  # cover the short at the open, flat on 100 -> 110
    # bar 5 (Thu): flat earns a day's interest; buy 0.5 at 111, hold to 108
    fin5 = cash * day
    g5 = (1 + fin5) * (1 - 0.5 * rate) * (1 + 0.5 * (108 / 111 - 1))
    growth = [g1, g2, g3, g4, g5]
    for s, g in zip(steps, growth, strict=True):
        assert s["net_return"] == pytest.approx(g - 1, abs=2e-6)
        assert s["net_return"] == pytest.approx(
            s["gross_return"] + s["dividend"] + s["financing"] - s["cost"], abs=1e-7
        )
    assert steps[1]["dividend"] == pytest.approx(div2 * (1 + 2.0 * (101 / 103 - 1)), abs=1e-6)
    assert steps[0]["financing"] == pytest.approx(fin1 * (104 / 102), abs=1e-7)
    assert steps[2]["financing"] == pytest.approx(fin3 * (1 - 0.5 * (100 / 99 - 1)), abs=1e-7)
    assert steps[3]["financing"] == pytest.approx(fin4, abs=1e-7)
    # the excess-return benchmark: what cash earned over each bar (the weekend bar three days)
    # (in float32, as every return of the env: 1 + r rounds r to ~1e-7)
    assert [s["risk_free"] for s in steps] == pytest.approx(
        [cash * day, cash * weekend, cash * day, cash * day, cash * day], abs=1e-7
    )
    assert steps[-1]["equity"] == pytest.approx(np.prod(growth), rel=1e-6)
    # the numpy reference form of the financing rule agrees with the env's
    from src.data.costs import financing

    assert financing(np.array([0.0, 1.0, p3, p4]), np.full(4, day), Costs(**FINANCED)) == pytest.approx(
        [cash * day, 0.0, fin3, fin4], abs=1e-12
    )


def test_buy_and_hold_gets_the_same_income_and_costs():
    from src.evaluation.walk import evaluate_split

    res = evaluate_split(financed_market(), "test", None)
    bh = res["buy_and_hold"].ledger
    assert bh["position"].tolist() == pytest.approx([1.0] * 5, abs=1e-6)  # 100% long, whatever the limits
    assert bh["dividend"].iloc[1] == pytest.approx(1 / 104 * (101 / 103), abs=1e-6)
    # in cash the night before it buys at the first open; then no cash, no short, no leverage: nothing more
    assert bh["financing"].iloc[0] == pytest.approx(0.04 / 365 * 104 / 102, rel=1e-5)
    assert bh["financing"].iloc[1:].abs().max() < 1e-9
    flat = res["flat"].ledger
    assert (flat["net_return"].to_numpy() == flat["risk_free"].to_numpy()).all()  # cash earns exactly the rate
    assert res["flat"].metrics["sharpe"] == 0.0  # cash earns the risk-free rate: no excess return, no Sharpe


def test_income_goes_to_the_weight_bought_at_the_close_with_fill_close():
    steps = run(financed_market("close"), [1.0, 1.0])
    # fill at bar 0's close: 1.0 holds over bar 1 and bar 2; the dividend (ex bar 2) goes to it
    assert steps[0]["dividend"] == 0.0 and steps[1]["dividend"] == pytest.approx(1 / 104, abs=1e-6)
    assert steps[1]["net_return"] == pytest.approx(101 / 104 - 1 + 1 / 104, abs=1e-6)


def test_fill_at_close_is_the_optimistic_option():
    rate = 10 / 1e4
    steps = run(hand_market(fill="close"), [1.0, 1.0])
    assert steps[0]["net_return"] == pytest.approx((1 - rate) * (104 / 100) - 1, abs=1e-6)
    assert steps[1]["net_return"] == pytest.approx(101 / 104 - 1, abs=1e-6)


def test_no_trade_band_keeps_the_drifted_weight():
    steps = run(hand_market(min_trade=0.6), [1.0, 0.5, 0.0])
    assert steps[1]["turnover"] == 0.0 and steps[1]["position"] == pytest.approx(1.0)
    assert steps[2]["turnover"] == pytest.approx(1.0)


def test_bankruptcy_terminates_and_is_not_truncation():
    m = hand_market()
    m.post[2] = 19.0  # the price goes x20 within bar 2: a -1 short loses everything
    steps = run(m, [-1.0, -1.0])
    assert steps[1]["term"] and not steps[1]["trunc"]
    assert steps[1]["equity"] == pytest.approx(0.0, abs=1e-6)


def test_time_limit_truncates_and_auto_reset_restarts():
    m = synthetic_market(n_bars=400, window=8, episode_length=5)
    gen = torch.Generator().manual_seed(0)
    env = MarketEnv(m, "train", 4, random_start=True, generator=gen)
    env.reset()
    start = env.t.clone()
    for i in range(5):
        _, _, term, trunc, info = env.step(torch.full((4,), 0.5))
        if i < 4:
            assert not trunc.any()
    assert trunc.all() and not term.any()
    np.testing.assert_array_equal(info["final_t"].numpy(), (start + 5).numpy())
    assert (env.steps == 0).all() and (env.equity == 1).all() and (env.position == 0).all()


def test_observation_is_the_window_up_to_t_and_the_position():
    m = synthetic_market(n_bars=400, window=8)
    gen = torch.Generator().manual_seed(3)
    env = MarketEnv(m, "train", 16, random_start=True, generator=gen)
    obs = env.reset()
    for _ in range(3):
        obs, *_ = env.step(torch.linspace(-1, 1, 16))
    for i in range(16):
        t = int(env.t[i])
        torch.testing.assert_close(obs.market[i], m.features[t - 7 : t + 1])
    torch.testing.assert_close(obs.position[:, 0], env.position)
    lo, hi = m.decision_range("train")
    assert lo == 7 and hi == m.splits["train"][1] - 2


def test_precomputed_windows_and_row_gather_give_the_same_observations():
    """The fast path (one contiguous row per env from ``all_windows``) equals gathering feature rows."""
    f = torch.arange(12.0).reshape(6, 2)
    torch.testing.assert_close(all_windows(f, 3)[1], torch.tensor([2.0, 3, 4, 5, 6, 7]))  # rows 1, 2, 3
    m = synthetic_market(n_bars=400, window=8)
    fast = MarketEnv(m, "train", 16, generator=torch.Generator().manual_seed(5))
    rows = MarketEnv(m, "train", 16, generator=torch.Generator().manual_seed(5))
    rows._windows = None  # what envs over their own paths (augmentation) use
    assert fast._windows is not None
    a, b = fast.reset(), rows.reset()
    for k in range(40):
        torch.testing.assert_close(a.market, b.market, rtol=0, atol=0)
        act = torch.sin(torch.arange(16.0) + k)
        a, *_ = fast.step(act)
        b, *_ = rows.step(act)
    final = fast.observe(fast.t[:5] - 1, fast.position[:5])
    torch.testing.assert_close(final.market, rows.observe(fast.t[:5] - 1, fast.position[:5]).market, rtol=0, atol=0)


def test_validation_walk_starts_at_the_last_train_bar_and_never_reads_past_its_split():
    m = synthetic_market(n_bars=400, window=8)
    env = MarketEnv(m, "val", 1, random_start=False)
    env.reset()
    start, end = m.splits["val"]
    assert int(env.t[0]) == start - 1 and env.max_len == end - start
    for _ in range(env.max_len):
        _, _, _, trunc, info = env.step(torch.zeros(1))
    assert int(info["t"][0]) == end - 1 and bool(trunc[0])
