"""The planted-signal markets plant what they say, their oracles are causal, and the suite compares configurations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src.core.utils import build
from src.data.planted import KINDS, planted_returns
from src.evaluation.oracle import oracle_results
from src.suite import MARKETS, edge_holm, edge_threshold, main, row
from tests.conftest import TINY, compose_cfg


def _market(tmp_path, name: str, *extra: str):
    return build(compose_cfg([f"env={name}", *extra], tmp_path).env)


def _autocorr(x: np.ndarray) -> float:
    return float(np.corrcoef(x[:-1], x[1:])[0, 1])


def test_each_generator_plants_its_edge_and_the_null_plants_none():
    n, se = 20_000, 1 / np.sqrt(20_000)  # the std of a sample autocorrelation under independence
    r, w, _ = planted_returns("momentum", n, 0.15, 0.01, seed=1)
    assert abs(_autocorr(r) - 0.15) < 4 * se and np.allclose(w, np.clip(r / 0.02, -1, 1))  # mu / sigma^2 sizing
    r, w, _ = planted_returns("mean_reversion", n, 0.15, 0.01, seed=1)
    assert abs(_autocorr(r) + 0.15) < 4 * se and np.allclose(w, np.clip(-r / 0.02, -1, 1))
    r, w, _ = planted_returns("null", n, 0.0, 0.01, seed=1)
    assert abs(_autocorr(r)) < 4 * se and abs(r.mean()) < 4 * 0.01 / np.sqrt(n) and not w.any()
    r, w, s = planted_returns("vol_clustering", n, 0.0008, 0.01, seed=1)
    assert _autocorr((r - 0.0008) ** 2) > 0.1 and w.min() > 0 and w.max() <= 1  # volatility clusters; long only
    assert np.corrcoef(w[:-1], s[1:])[0, 1] < -0.5  # the oracle sizes down where the next bar's volatility is high
    r, w, _ = planted_returns("regime", n, 0.002, 0.01, seed=1, stay=0.98)
    assert 30 < n / (np.abs(np.diff(w)) > 0).sum() < 70  # regimes last ~1 / (1 - stay) = 50 bars
    assert r[w > 0].mean() - r[w < 0].mean() == pytest.approx(0.004, abs=4 * 0.01 * np.sqrt(4 / n))
    r, w, _ = planted_returns("ou_trend", n, 0.05, 0.01, seed=1)
    x = np.cumsum(r) - 3e-4 * np.arange(n)  # the OU deviation
    assert np.corrcoef(x[:-1], r[1:])[0, 1] < -0.1  # a deviation from the trend predicts a return back


def test_the_oracle_is_measured_causally_through_the_env(tmp_path):
    """The momentum oracle's Sharpe after costs is near its theory (per bar ~rho: 0.15 x sqrt(252) = 2.4 before
    costs and the cap); a one-bar peek at the future (what a misaligned oracle would be) earns several times as much."""
    m = _market(tmp_path, "momentum", "env.n_bars=6000")
    fair = oracle_results(m, "test")["sharpe"]
    assert 1.0 < fair < 3.0
    m.oracle = np.sign(np.log(m.bars["close"]).diff().shift(-1).fillna(0).to_numpy())  # holds the next return's sign
    assert oracle_results(m, "test")["sharpe"] > 3 * fair


@pytest.mark.parametrize("name", MARKETS)
def test_every_suite_market_is_an_env_option_with_an_oracle(tmp_path, name):
    m = _market(tmp_path, name)
    assert m.oracle is not None and len(m.oracle) == len(m.bars) and not np.isnan(m.oracle).any()
    assert m.name == name and any(k in m.source for k in KINDS)


def test_the_suite_compares_a_configuration_with_a_baseline(tmp_path):
    """A candidate a population cannot train (target_kl stops a population's epochs together) runs its seeds as
    separate runs (seed=0, seed=1) gathered into one row, and is paired seed by seed with a batched baseline;
    shared overrides reach both arms; a finished run is never reused for other settings."""
    tiny = [o for o in TINY if not o.startswith("env=")]
    out = tmp_path / "suite"
    main(["--markets", "momentum", "--population", "2", "--out", str(out), "--parallel", "2", "--baseline", "",
          "--candidate", "algo.target_kl=0.5", "--report", str(tmp_path / "new" / "results.md"), *tiny,
          "env.seed=2"])  # fmt: skip
    (row,) = json.loads((out / "suite.json").read_text())
    assert row["market"] == "momentum" and row["members"] == 2 and len(row["member_sharpes"]) == 2
    runs = [json.loads((out / "candidate" / "momentum" / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert row["separate"] and row["member_sharpes"] == [r["test"]["agent"]["sharpe"] for r in runs]
    cmd = json.loads((out / "candidate" / "momentum" / "seed_1" / "suite_command.json").read_text())
    assert "seed=1" in cmd and "population=1" in cmd and "algo.target_kl=0.5" in cmd
    assert "separate runs" in (out / "suite.md").read_text()
    base = json.loads((out / "baseline" / "momentum" / "metrics.json").read_text())
    assert not row["baseline_separate"] and len(base["members"]) == 2  # one batched population
    diffs = [c["test"]["agent"]["sharpe"] - b["test"]["agent"]["sharpe"] for c, b in
             zip(runs, base["members"], strict=True)]  # fmt: skip
    assert row["difference"]["mean"] == pytest.approx(np.mean(diffs))
    # a target KL this loose never stops an epoch here: the separate runs are the batched members, seed for seed
    assert diffs == pytest.approx([0.0, 0.0], abs=1e-4)
    assert row["oracle_sharpe"] > 1  # this path's oracle earns (the 60 test bars of env.seed=0 hardly do)
    assert row["oracle_share"]["mean"] == pytest.approx(np.mean(row["member_sharpes"]) / row["oracle_sharpe"])
    assert "momentum" in (tmp_path / "new" / "results.md").read_text()
    cmd = json.loads((out / "baseline" / "momentum" / "suite_command.json").read_text())
    assert "env.n_bars=400" in cmd and "algo.target_kl=0.5" not in cmd  # shared overrides reach both arms
    with pytest.raises(SystemExit, match="other settings"):  # a finished run is never reused for other settings
        main(["--markets", "momentum", "--population", "2", "--out", str(out), "--candidate", "algo.target_kl=0.5",
              *tiny, "env.seed=2", "algo.update_epochs=3"])  # fmt: skip


def _member(sharpe: float, psr: float, vol: float) -> dict:
    return {"verdict": {"test": {"psr_vs_zero": psr}}, "test": {"agent": {"sharpe": sharpe, "annual_volatility": vol}}}


def test_the_edge_count_is_one_sided_and_a_member_that_never_traded_shows_none():
    """A flat member's PSR is exactly 0 (its Sharpe is 0 and known) and a member that only lost its costs has
    PSR near 0: neither is an edge (one-sided); a member with PSR 0.999 is, after Holm over the three
    (p 0.001 x 3). The null market's flat oracle gives neither share, however far buy-and-hold is below it."""
    metrics = {"members": [_member(0.0, 0.0, 0.0), _member(3.0, 0.999, 0.1), _member(-3.0, 0.001, 0.1)],
               "population": {"buy_and_hold_sharpe": -0.6, "beat_buy_and_hold_holm": 0}}  # fmt: skip
    assert edge_holm(metrics) == 1
    r = row("null_market", metrics, 0.0, None)
    assert r["oracle_share"] is None and r["excess_share"] is None
    assert row("momentum", metrics, 2.0, None)["excess_share"]["mean"] == pytest.approx(
        (0.0 + 0.6) / 2.6
    )  # mean of 0, 3, -3
    assert row("momentum", metrics, -0.2, None)["excess_share"] is None  # oracle 0.4 above B&H: a ratio of noise
    # Holm's first step over 8 members, one-sided: z(1 - 0.05 / 8) = 2.4977 x sqrt(252 / 445) = 1.880
    assert edge_threshold(446, 252.0, 8) == pytest.approx(1.880, abs=1e-3)


def test_arms_on_different_markets_are_refused(tmp_path):
    """Pairing needs one market and one oracle: an env.* override of one arm is refused before anything trains,
    and runs whose data or costs differ are never paired."""
    with pytest.raises(SystemExit, match="--candidate sets env.costs.spread_bps"):
        main(["--markets", "momentum", "--out", str(tmp_path), "--baseline", "",
              "--candidate", "env.costs.spread_bps=10"])  # fmt: skip
    assert not (tmp_path / "candidate").exists()
    one = {"data": "a", "costs": {"spread_bps": 2.0}}
    metrics = {"members": [_member(1.0, 0.9, 0.1)] * 2, "runs": [one],
               "population": {"buy_and_hold_sharpe": 0.0, "beat_buy_and_hold_holm": 0}}  # fmt: skip
    assert row("momentum", metrics, 2.0, metrics)["difference"]["mean"] == 0
    other = {**metrics, "runs": [{**one, "costs": {"spread_bps": 10.0}}]}
    with pytest.raises(SystemExit, match="different data or costs"):
        row("momentum", metrics, 2.0, other)
