"""Nothing looks ahead: perturbing the future changes no observation or action up to t, and a random walk
gives no significant test Sharpe while a planted leak would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from src.data import build_market
from src.evaluation.walk import model_policy, run_policies
from src.models.actor_critic import mlp_actor_critic
from src.suite import edge_holm
from src.train import train
from tests.conftest import TINY, compose_cfg


def _perturbed_after(bars: pd.DataFrame, t: int, seed: int = 0) -> pd.DataFrame:
    """Every bar after ``t`` rescaled, open and close by different factors (high/low widened to stay valid)."""
    out = bars.copy()
    s_open, s_close = np.exp(np.random.default_rng(seed).normal(0, 0.1, (2, len(bars) - t - 1)))
    col = out.columns.get_loc
    out.iloc[t + 1 :, col("open")] *= s_open
    out.iloc[t + 1 :, col("close")] *= s_close
    out.iloc[t + 1 :, col("high")] *= np.maximum(s_open, s_close)
    out.iloc[t + 1 :, col("low")] *= np.minimum(s_open, s_close)
    out.iloc[t + 1 :, col("volume")] *= 3
    return out


@pytest.mark.parametrize("leak", [False, True])
def test_perturbing_the_future_changes_no_observation_or_action_up_to_t(bars, leak):
    """(a) Bars after t replaced: every feature, observation and chosen action at bars <= t is unchanged.

    With the deliberate leak (the canary) the same check fails: the guard can catch a look-ahead.
    """
    kw = dict(name="x", source="mem", window=10, leak_next_return=leak)
    m = build_market(bars, data_hash="0", **kw)
    t_row = m.splits["test"][0] + 10  # a bar inside the test split; the train statistics stay the same
    m2 = build_market(_perturbed_after(bars, t_row + 35), data_hash="1", **kw)  # +35: the feature warm-up
    torch.manual_seed(0)
    policy = model_policy(mlp_actor_critic(m.num_features, m.window).eval())
    same_features = torch.equal(m.features[: t_row + 1], m2.features[: t_row + 1])
    a, b = (run_policies(x, "test", policy)["agent"] for x in (m, m2))
    first = m.decision_range("test")[0]
    upto = t_row - first + 1  # ledger rows whose decision bar is <= t
    same_actions = np.array_equal(a["position"].to_numpy()[:upto], b["position"].to_numpy()[:upto])
    if leak:
        assert not same_features and not same_actions
    else:
        assert same_features and same_actions
        np.testing.assert_array_equal(m.norm_mean, m2.norm_mean)
        assert not np.array_equal(a["position"].to_numpy()[upto:], b["position"].to_numpy()[upto:])


# A driftless random walk (no signal), no costs: without information the expected P&L is exactly zero.
RANDOM_WALK = [
    "env.drifts=[0.0]",
    "env.vols=[0.01]",
    "env.n_bars=1500",
    "env.costs.commission_bps=0",
    "env.costs.spread_bps=0",
    "env.costs.slippage_bps=0",
    "model=mlp",
    "optimizer.lr=0.003",
    "trainer.max_steps=96",
    "trainer.val_check_interval=4",
    "~logger",
]


def _pooled_t(tmp_path: Path, seeds: range, *extra: str) -> tuple[float, list[float], dict]:
    """t-statistic of the mean per-bar test return pooled over runs, each run's test Sharpe, and the runs as the
    members of a population (what the suite's edge count reads)."""
    rets, sharpes, members = [], [], []
    tiny = [o for o in TINY if not o.startswith("model.") or o.startswith("model.head")]
    for s in seeds:
        run = tmp_path / f"s{s}"
        run.mkdir(parents=True)
        train(compose_cfg([*tiny, *RANDOM_WALK, f"env.seed={100 + s}", f"seed={s}", *extra], run))
        rets.append(pd.read_csv(run / "trades_test.csv")["net_return"].to_numpy())
        members.append(json.loads((run / "metrics.json").read_text()))
        sharpes.append(members[-1]["test"]["agent"]["sharpe"])
    r = np.concatenate(rets)
    return float(r.mean() / r.std(ddof=1) * np.sqrt(len(r))), sharpes, {"members": members}


def test_random_walk_gives_no_significant_test_sharpe_and_a_leak_would(tmp_path):
    """(c) On a driftless random walk the trained agent's pooled test P&L is indistinguishable from zero;
    (d) the same statistic with the next bar's return leaked into the observation is far from zero. The suite's
    null-row check (members with an edge after Holm) reads 0 of 4 on the first and flags both leaky runs."""
    t_null, sharpes, null = _pooled_t(tmp_path / "null", range(4))
    assert abs(t_null) < 3.0, (t_null, sharpes)
    assert edge_holm(null) == 0
    t_leak, leak_sharpes, leak = _pooled_t(tmp_path / "leak", range(2), "+env.leak_next_return=true")
    assert t_leak > 8.0 and min(leak_sharpes) > 5.0, (t_leak, leak_sharpes)
    assert edge_holm(leak) == 2
