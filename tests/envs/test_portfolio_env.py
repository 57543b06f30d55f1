"""The portfolio env's ledger: a hand-computed three-asset, five-bar example, the limits, and K = 1 = one asset."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from src.data.portfolio import PortfolioMarket
from src.envs.accounting import Scalars, account
from src.envs.portfolio_env import PortfolioEnv, portfolio_account, within_limits
from src.models.portfolio import SimplexDirichlet


def market(pre, post, dividend=None, rate=(0.0,), borrow=None, cash=0.0, margin=0.0, min_trade=0.0, accrual=0.01,
           mode="long_only", gross=1.0, window=1, episode_length=100, features=2) -> PortfolioMarket:  # fmt: skip
    pre, post = torch.tensor(pre, dtype=torch.float32), torch.tensor(post, dtype=torch.float32)
    t, k = pre.shape
    return PortfolioMarket(
        name="test", tickers=[f"a{i}" for i in range(k)], dates=pd.date_range("2020-01-01", periods=t, freq="D"),
        close=torch.ones(t, k).numpy(), features=torch.randn(t, k, features, generator=torch.Generator().manual_seed(0)),
        pre=pre, post=post, dividend=torch.zeros(t, k) if dividend is None else torch.tensor(dividend),
        accrual=torch.full((t,), accrual), rate=torch.tensor(rate), borrow=torch.zeros(k) if borrow is None else
        torch.tensor(borrow), cash_rate=cash, margin_rate=margin, splits={"train": (0, t), "val": (t, t),
        "test": (t, t)}, window=window, bars_per_year=252.0, bars_per_day=1, episode_length=episode_length,
        min_trade=min_trade, min_equity=0.05, mode=mode, gross=gross, data_hash="x", universe=None,
    )  # fmt: skip


def test_three_assets_five_bars_by_hand():
    """Buy from cash, drift inside the no-trade band, rebalance through a dividend, sell everything: every step's
    net return, cost, financing, dividend, weights and equity as computed by hand below (rates 10/20/40 bp, cash
    at 10% a year over 0.01 year a bar, a 5% no-trade band, a 2% dividend on asset 0 at bar 3)."""
    pre = [[0, 0, 0], [0, 0, 0], [0.02, 0, -0.1], [-0.05, 0.03, 0], [0, 0, 0.02]]
    post = [[0, 0, 0], [0.10, -0.05, 0], [0, 0, 0], [0, 0, 0.05], [0, 0, 0]]
    div = [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0.02, 0, 0], [0, 0, 0]]
    m = market(pre, post, div, rate=(0.001, 0.002, 0.004), cash=0.10, min_trade=0.05)
    env = PortfolioEnv(m, "train", 1, random_start=False, auto_reset=False)
    env.reset()
    got = [env.step_weights(torch.tensor([a], dtype=torch.float32))[4] for a in
           ([0.5, 0.25, 0.0], [0.53, 0.23, 0.0], [0.2, 0.2, 0.5], [0.0, 0.0, 0.0])]  # fmt: skip
    cash = 0.10 * 0.01  # cash's return over one bar

    # bar 1: from cash (which earns over the night) to 50/25/0; then asset 0 +10%, asset 1 -5% open to close
    g1 = 1 + cash * 1.0
    cost1 = 0.5 * 0.001 + 0.25 * 0.002
    g2 = 1 + 0.5 * 0.10 + 0.25 * -0.05
    w = [0.5 * 1.10 / g2, 0.25 * 0.95 / g2, 0.0]
    eq = g1 * (1 - cost1) * g2
    check(got[0], net=eq - 1, cost=g1 * g2 * cost1, fin=cash * g2, div=0.0, turnover=0.75, held=[0.5, 0.25, 0],
          after=w, equity=eq)  # fmt: skip

    # bar 2: asset 0 gaps +2%; the target is within 5% of the drifted book: no trade, nothing paid
    c = 1 - w[0] - w[1]
    g1 = 1 + w[0] * 0.02 + cash * c
    d = [w[0] * 1.02 / g1, w[1] / g1, 0.0]
    assert abs(0.53 - d[0]) + abs(0.23 - d[1]) < 0.05  # the band holds the book
    eq *= g1
    check(got[1], net=g1 - 1, cost=0.0, fin=cash * c, div=0.0, turnover=0.0, held=d, after=d, equity=eq)

    # bar 3: asset 0's 2% dividend to the weight held overnight, gaps -5%/+3%; rebalance to 20/20/50; asset 2 +5%
    w = d
    c = 1 - w[0] - w[1]
    div1, fin1 = w[0] * 0.02, cash * c
    g1 = 1 + w[0] * -0.05 + w[1] * 0.03 + div1 + fin1
    d = [w[0] * 0.95 / g1, w[1] * 1.03 / g1, 0.0]
    turnover = abs(0.2 - d[0]) + abs(0.2 - d[1]) + 0.5
    cost3 = abs(0.2 - d[0]) * 0.001 + abs(0.2 - d[1]) * 0.002 + 0.5 * 0.004
    g2 = 1 + 0.5 * 0.05
    after = [0.2 / g2, 0.2 / g2, 0.5 * 1.05 / g2]
    eq *= g1 * (1 - cost3) * g2
    check(got[2], net=g1 * (1 - cost3) * g2 - 1, cost=g1 * g2 * cost3, fin=fin1 * g2, div=div1 * g2,
          turnover=turnover, held=[0.2, 0.2, 0.5], after=after, equity=eq)  # fmt: skip

    # bar 4: asset 2 gaps +2%, then everything is sold at the open (to cash, which earned the night's interest)
    w = after
    c = 1 - sum(w)
    g1 = 1 + w[2] * 0.02 + cash * c
    d = [w[0] / g1, w[1] / g1, w[2] * 1.02 / g1]
    cost4 = d[0] * 0.001 + d[1] * 0.002 + d[2] * 0.004
    eq *= g1 * (1 - cost4)
    check(got[3], net=g1 * (1 - cost4) - 1, cost=g1 * cost4, fin=cash * c, div=0.0, turnover=sum(d),
          held=[0, 0, 0], after=[0, 0, 0], equity=eq)  # fmt: skip


def check(info, net, cost, fin, div, turnover, held, after, equity):
    for key, want in (("net_return", net), ("cost", cost), ("financing", fin), ("dividend", div),
                      ("turnover", turnover), ("equity", equity)):  # fmt: skip
        assert float(info[key][0]) == pytest.approx(want, rel=1e-5, abs=1e-6), key
    assert info["position"][0].tolist() == pytest.approx(held, abs=1e-6)
    assert info["final_position"][0].tolist() == pytest.approx(after, abs=1e-6)
    parts = info["gross_return"] + info["dividend"] + info["financing"] - info["cost"]  # the ledger adds up
    assert float(parts[0]) == pytest.approx(float(info["net_return"][0]), abs=1e-6)


@pytest.mark.parametrize(("mode", "gross"), [("long_only", 1.0), ("long_short", 1.5)])
def test_weights_stay_within_the_limits(mode, gross):
    """Random policy actions, arbitrary (out-of-range) targets and "keep the book" targets (inside the no-trade
    band, so only drift moves the book) over random, violent returns: the weights after every fill are within
    the limits; long-only books stay within them after drift too."""
    g = torch.Generator().manual_seed(3)
    t, k = 400, 4
    r = (torch.rand(t, k, generator=g) - 0.5) * 0.3
    m = market(r.tolist(), (r.flip(0) * 0.5).tolist(), rate=(0.001,) * k, cash=0.02, margin=0.06,
               borrow=(0.01,) * k, min_trade=0.05, mode=mode, gross=gross, episode_length=50)  # fmt: skip
    env = PortfolioEnv(m, "train", 64, random_start=True, generator=torch.Generator().manual_seed(0))
    env.reset()
    legs = k + 1 if mode == "long_only" else 2 * k + 1
    for i in range(300):
        if i % 3 == 0:
            _, _, _, _, info = env.step(SimplexDirichlet(torch.rand(64, legs, generator=g) * 3 + 0.2).sample())
        elif i % 3 == 1:
            _, _, _, _, info = env.step_weights(torch.randn(64, k, generator=g) * 2)
        else:
            _, _, _, _, info = env.step_weights(env.position.clone())
        assert bool(within_limits(info["position"], mode, gross).all())
        if mode == "long_only":
            assert bool(within_limits(info["final_position"], mode, gross).all())


def test_long_short_weights_from_the_legs():
    m = market([[0, 0]] * 4, [[0, 0]] * 4, mode="long_short", gross=2.0)
    env = PortfolioEnv(m, "train", 1, random_start=False)
    w = env.to_weights(torch.tensor([[0.5, 0.1, 0.0, 0.3, 0.1]]))
    assert w[0].tolist() == pytest.approx([1.0, -0.4])


def test_one_asset_is_the_single_asset_accounting():
    """K = 1 gives :func:`src.envs.accounting.account`'s numbers (open fill): drift, band, costs, dividend,
    cash interest, margin and borrow fees, to float rounding."""
    g = torch.Generator().manual_seed(4)
    n = 512
    p, a = torch.rand(n, generator=g) * 3 - 1, torch.rand(n, generator=g) * 3 - 1
    pre, post = (torch.rand(n, generator=g) - 0.5) * 0.2, (torch.rand(n, generator=g) - 0.5) * 0.2
    div, years = torch.rand(n, generator=g) * 0.01, torch.full((n,), 3 / 365)
    costs = type("C", (), {"cash_rate": 0.03, "borrow_rate": 0.02, "margin_rate": 0.07})()
    k = Scalars.make(0.0015, 0.05, costs=costs)
    held, turnover, gross, growth, after, _, d, f = account(p, pre, post, a, k, div, years)
    one = portfolio_account(p[:, None], pre[:, None], post[:, None], a[:, None], torch.tensor([0.0015]), 0.05,
                            div[:, None], years, 0.03, 0.07, torch.tensor([0.02]))  # fmt: skip
    for got, want in zip((one[0][:, 0], one[1], one[3], one[4], one[5][:, 0], one[6], one[7]),
                         (held, turnover, gross, growth, after, d, f), strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert 0 < int((turnover == 0).sum()) < n  # the band held some books and not others


def test_a_saved_env_continues_the_same_episodes():
    """state_dict / load_state_dict (what a resumed run restores): the same weights, bars and rewards after."""
    g = torch.Generator().manual_seed(7)
    r = (torch.rand(200, 3, generator=g) - 0.5) * 0.1
    m = market(r.tolist(), r.tolist(), rate=(0.001,) * 3, min_trade=0.01, episode_length=15)
    a = PortfolioEnv(m, "train", 6, generator=torch.Generator().manual_seed(1))
    a.reset()
    acts = [SimplexDirichlet(torch.full((6, 4), 2.0)).sample() for _ in range(40)]
    for x in acts[:10]:
        a.step(x)
    b = PortfolioEnv(m, "train", 6, generator=torch.Generator().manual_seed(2))
    b.reset()
    b.load_state_dict(a.state_dict())
    for x in acts[10:]:  # past the episodes' end: restarts draw from the restored generator
        oa, ra, *_ = a.step(x)
        ob, rb, *_ = b.step(x)
        assert torch.equal(ra, rb) and torch.equal(oa.position, ob.position) and torch.equal(oa.market, ob.market)


def test_a_shares_and_cash_ledger_gives_the_same_equity():
    """An independent ledger in shares, cash and prices (longs, shorts, leverage, dividends paid and owed, cash
    interest, the short rebate, margin on borrowed cash, borrow fees, per-asset costs, the no-trade band) over
    40 bars gives the env's equity at every close."""
    g = torch.Generator().manual_seed(8)
    t, k = 41, 3
    close = 100 * torch.cumprod(1 + (torch.rand(t, k, generator=g) - 0.5) * 0.06, 0).double()
    opens = close.roll(1, 0) * (1 + (torch.rand(t, k, generator=g) - 0.5) * 0.02).double()
    opens[0] = close[0]
    dps = torch.where(torch.rand(t, k, generator=g) < 0.1, 0.8, 0.0).double()  # cash per share on ex-dates
    pre, post = torch.zeros(t, k).double(), torch.zeros(t, k).double()
    pre[1:], post[1:] = opens[1:] / close[:-1] - 1, close[1:] / opens[1:] - 1
    yld = torch.zeros(t, k).double()
    yld[1:] = dps[1:] / close[:-1]
    rate, borrow, cash_r, margin_r, years = (0.001, 0.002, 0.0005), (0.01, 0.03, 0.02), 0.03, 0.08, 3 / 365
    m = market(pre.tolist(), post.tolist(), yld.tolist(), rate=rate, borrow=borrow, cash=cash_r, margin=margin_r,
               min_trade=0.05, accrual=years, mode="long_short", gross=2.0)  # fmt: skip
    env = PortfolioEnv(m, "train", 1, random_start=False, auto_reset=False)
    env.reset()
    shares, cash = [0.0] * k, 1.0
    target, seen = [0.0] * k, {"short": 0, "borrowed": 0, "dividend owed": 0}
    for s in range(t - 1):
        if s % 4 != 3:  # every 4th bar keeps the last target: the band decides
            raw = (torch.rand(k, generator=g) * 2 - 1).tolist()
            scale = max(1.0, sum(abs(x) for x in raw) / 2.0)
            target = [x / scale for x in raw]
        info = env.step_weights(torch.tensor([target], dtype=torch.float32))[4]
        b = s + 1  # the bar this step realises
        # overnight, on the values at the previous close
        value = [n * float(close[s, j]) for j, n in enumerate(shares)]
        equity = cash + sum(value)
        longs, shorts = sum(v for v in value if v > 0), [max(-v, 0.0) for v in value]
        seen["short"] += sum(shorts) > 0
        seen["borrowed"] += longs > equity
        seen["dividend owed"] += any(n < 0 and float(dps[b, j]) > 0 for j, n in enumerate(shares))
        cash += sum(n * float(dps[b, j]) for j, n in enumerate(shares))
        cash += years * (cash_r * (max(equity - longs, 0) + sum(shorts)) - margin_r * max(longs - equity, 0)
                         - sum(f * x for f, x in zip(borrow, shorts, strict=True)))  # fmt: skip
        # the open: trade to the target weights when the book moved by the band, or drift took it past gross 2
        e1 = cash + sum(n * float(opens[b, j]) for j, n in enumerate(shares))
        w = [n * float(opens[b, j]) / e1 for j, n in enumerate(shares)]
        if sum(abs(a - x) for a, x in zip(target, w, strict=True)) >= 0.05 or sum(abs(x) for x in w) > 2 + 1e-5:
            cost = e1 * sum(r * abs(a - x) for r, a, x in zip(rate, target, w, strict=True))
            e1 -= cost
            shares = [a * e1 / float(opens[b, j]) for j, a in enumerate(target)]
            cash = e1 - sum(n * float(opens[b, j]) for j, n in enumerate(shares))
        equity = cash + sum(n * float(close[b, j]) for j, n in enumerate(shares))
        assert float(info["equity"][0]) == pytest.approx(equity, rel=2e-5), s
    assert min(seen.values()) > 0, seen  # the path went short, borrowed cash and owed a dividend


def test_baselines_are_not_forced_into_the_agents_limits():
    """A long/short agent with gross 0.8: the equal-weight buy-and-hold baseline (gross 1) still trades once."""
    g = torch.Generator().manual_seed(9)
    r = ((torch.rand(60, 3, generator=g) - 0.5) * 0.04).tolist()
    m = market(r, r, rate=(0.001,) * 3, mode="long_short", gross=0.8)
    env = PortfolioEnv(m, "train", 2, random_start=False, auto_reset=False)
    env.reset()
    ew = torch.full((2, 3), 1 / 3)
    turnover = []
    for s in range(50):
        hold = torch.tensor([False, s > 0])
        info = env.step_weights(ew, bound=torch.tensor([True, False]), hold=hold)[4]
        turnover.append(info["turnover"])
        assert float(info["position"][0].abs().sum()) <= 0.8 + 1e-5  # the bound book is held to its limit
    turnover = torch.stack(turnover)
    assert float(turnover[0, 1]) == pytest.approx(1.0) and float(turnover[1:, 1].abs().sum()) == 0.0
