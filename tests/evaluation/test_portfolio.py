"""The portfolio's data (one calendar), its baselines, its policy and its run from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from src.core.errors import ConfigError, DataError
from src.data.portfolio import load_portfolio
from src.envs.market_env import Obs
from src.evaluation.portfolio import evaluate_portfolio, month_starts
from src.models.portfolio import PortfolioActorCritic
from src.train import main
from tests.conftest import TINY, compose_cfg
from tests.helpers import write_ticker_csv


@pytest.fixture
def files(tmp_path):
    return [write_ticker_csv(tmp_path / "aaa_daily.csv", 900, 1, "2000-01-03"), write_ticker_csv(tmp_path / "bbb_daily.csv", 700, 2,
            "2000-10-02"), write_ticker_csv(tmp_path / "ccc_daily.csv", 800, 3, "2000-06-01")]  # fmt: skip


def load(files, **kw):
    return load_portfolio(files, **{"window": 10, "episode_length": 40, "min_trade": 0.0, "costs": {"spread_bps": 2.0},
                                    **kw})  # fmt: skip


def test_assets_on_their_common_dates(files):
    """Row t of every asset is the same date; the period starts at the latest asset's first bar; the splits are
    the universe's calendar dates; each asset's features are its own market's rows."""
    pm = load(files)
    u = pm.universe
    assert pm.dates[0] == max(m.bars.index[0] for m in u.markets) and pm.dates[-1] == u.last
    a = pm.splits["val"][0]
    assert pm.dates[a] == u.val_start and pm.dates[pm.splits["test"][0]] == u.test_start
    for k, m in enumerate(u.markets):
        rows = m.bars.index.get_indexer(pm.dates)
        assert (rows >= 0).all()
        assert torch.equal(pm.features[:, k], m.features[torch.as_tensor(rows)])
        assert torch.equal(pm.post[:, k], m.post[torch.as_tensor(rows)])
        assert np.array_equal(pm.close[:, k], m.bars["close"].to_numpy()[rows])


def test_a_missing_date_is_refused(files, tmp_path):
    text = (tmp_path / "bbb_daily.csv").read_text().splitlines()
    del text[400]  # one mid-period bar of bbb
    (tmp_path / "bbb_daily.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match="bbb|aaa.*lacks"):
        load(files)


def test_bad_settings_are_refused(files):
    with pytest.raises(ConfigError, match="env.mode"):
        load(files, mode="short_only")
    with pytest.raises(ConfigError, match="gross"):
        load(files, gross=2.0)  # long_only
    with pytest.raises(ConfigError, match="cash_rate"):
        load(files, ticker_costs={"bbb": {"cash_rate_bps": 100.0}})
    with pytest.raises(ConfigError, match="fill"):
        load(files, fill="close")


def test_the_baselines_trade_as_named(files):
    """Equal-weight buy-and-hold buys 1/K of each asset at the first open and never trades again (its equity is the
    mean of the assets' close over that open); 1/N trades only at the open after each month's first bar, back to
    1/K each; an asset held alone earns its close over the first fill's open; flat earns nothing; the best single
    asset in hindsight is the hold with the highest total return."""
    pm = load(files, costs={"spread_bps": 0.0})
    res, holds = evaluate_portfolio(pm, "test")
    k = pm.num_assets
    bh, one_n = res["buy_and_hold"].ledger, res["one_over_n"].ledger
    weights = [f"w_{t}" for t in pm.tickers]
    first = pm.decision_range("test")[0]
    opens = [m.bars["open"].reindex(pm.dates).to_numpy() for m in pm.universe.markets]
    assert (bh["turnover"].to_numpy()[1:] == 0).all()
    np.testing.assert_allclose(bh[weights].iloc[0], 1 / k, rtol=1e-6)
    want = np.mean([pm.close[-1, j] / opens[j][first + 1] for j in range(k)])
    assert bh["equity"].iloc[-1] == pytest.approx(want, rel=1e-4)
    traded = one_n["turnover"].to_numpy() > 0
    starts = month_starts(pm).cpu().numpy()
    fills = pm.dates[np.flatnonzero(starts[first:-1]) + first + 1]  # the bar after each month's first
    assert set(one_n.index[traded][1:]) == set(fills) and len(fills) > 3
    np.testing.assert_allclose(one_n.loc[traded, weights], 1 / k, rtol=1e-6)
    assert (res["flat"].ledger["equity"] == 1).all()
    for j, (tk, r) in enumerate(holds.items()):
        assert r.ledger["equity"].iloc[-1] == pytest.approx(pm.close[-1, j] / opens[j][first + 1], rel=1e-4), tk
    best = max(holds, key=lambda tk: holds[tk].metrics["total_return"])
    assert res["best_single_in_hindsight"] is holds[best]


def test_the_policy_has_no_asset_identity():
    """Permuting the assets permutes the long legs' concentrations and leaves the value unchanged."""
    torch.manual_seed(0)
    model = PortfolioActorCritic(4, 3, 6, "long_short", d_model=16, n_heads=2, n_layers=1, d_ff=32, head_hidden=8)
    obs = Obs(torch.randn(5, 4, 6, 3), torch.rand(5, 4) * 0.2)
    perm = torch.tensor([2, 0, 3, 1])
    d, v = model(obs)
    dp, vp = model(Obs(obs.market[:, perm], obs.position[:, perm]))
    torch.testing.assert_close(vp, v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dp.alpha[:, :4], d.alpha[:, :4][:, perm], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dp.alpha[:, 4:8], d.alpha[:, 4:8][:, perm], rtol=1e-4, atol=1e-5)
    a = d.sample()
    assert a.shape == (5, 9) and torch.allclose(a.sum(-1), torch.ones(5))
    assert torch.isfinite(d.log_prob(a)).all()


@pytest.mark.slow
def test_cli_portfolio_run_writes_the_per_asset_report(files, tmp_path):
    """``env=portfolio`` trains, selects on validation and writes the report with the 1/N comparison and the
    per-asset table; the agent's weights in the ledger stay long-only within the simplex."""
    run = tmp_path / "run"
    run.mkdir()
    paths = "[" + ",".join(files) + "]"
    small = [o for o in TINY if not o.startswith("env")] + ["env.window=8", "env.episode_length=32"]
    cfg = compose_cfg([*small, "env=portfolio", f"env.paths={paths}", "~env.ticker_costs"], run)
    main(cfg)
    report = (run / "report.md").read_text()
    assert "## Portfolio: the agent against 1/N" in report and "best single asset in hindsight" in report
    for tk in ("aaa", "bbb", "ccc"):
        assert f"| {tk} |" in report
    info = json.loads((run / "run_info.json").read_text())
    assert set(info["portfolio"]["mean_weights"]) == {"aaa", "bbb", "ccc"}
    import pandas as pd

    led = pd.read_csv(run / "trades_test.csv")
    w = led[[c for c in led.columns if c.startswith("w_")]].to_numpy()
    assert w.shape[1] == 3 and (w >= -1e-6).all() and (w.sum(1) <= 1 + 1e-5).all()
