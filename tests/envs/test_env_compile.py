"""``compile=True``: the env's step as one compiled kernel gives what the eager step gives."""

from __future__ import annotations

import pytest
import torch

from src.data.augment import Augmenter, MagnitudeWarp
from src.data.loader import load_ohlcv
from src.data.market import build_market
from src.data.synthetic import synthetic_market
from src.envs.augmented_env import AugmentedEnv
from src.envs.market_env import MarketEnv
from tests.conftest import ROOT, TINY, compose_cfg

TSLA = load_ohlcv(ROOT / "data" / "tsla_daily.csv")
INFO = (
    "t", "position", "turnover", "gross_return", "cost", "net_return", "equity", "final_t", "final_position",
    "dividend", "financing", "risk_free",
)  # fmt: skip
FINANCED = {"commission_bps": 1, "cash_rate_bps": 400, "borrow_bps": 100, "margin_rate_bps": 600}


def assert_same_walk(eager: MarketEnv, fused: MarketEnv, steps: int, scale: float = 1.2) -> dict:
    """Step both envs with the same actions; every output and state agrees (floats to rounding)."""
    n = eager.n
    a, b = eager.reset(), fused.reset()
    g = torch.Generator().manual_seed(1)
    seen = {"terminated": 0, "truncated": 0}
    for k in range(steps):
        torch.testing.assert_close(a.market, b.market, rtol=0, atol=0, msg=f"observation at step {k}")
        torch.testing.assert_close(a.position, b.position, rtol=1e-6, atol=1e-7)
        act = (torch.rand(n, generator=g) * 2 - 1) * scale  # beyond the limits too: both clip
        a, r1, term1, trunc1, i1 = eager.step(act)
        b, r2, term2, trunc2, i2 = fused.step(act)
        assert torch.equal(term1, term2) and torch.equal(trunc1, trunc2), f"episode ends differ at step {k}"
        torch.testing.assert_close(r1, r2, rtol=1e-5, atol=1e-7)
        for key in INFO:
            torch.testing.assert_close(i1[key], i2[key], rtol=1e-5, atol=1e-7, msg=f"info[{key!r}] at step {k}")
        for key in ("t", "steps"):
            assert torch.equal(getattr(eager, key), getattr(fused, key)), f"env.{key} at step {k}"
        seen["terminated"] += int(term1.sum())
        seen["truncated"] += int(trunc1.sum())
    return seen


@pytest.mark.parametrize(
    ("rows", "financed"),
    [(False, False), (True, False), (False, True)],
    ids=["window-tensor", "row-gather", "financed"],
)
def test_compiled_step_equals_the_eager_step(rows, financed):
    m = synthetic_market(n_bars=400, window=8, **({"costs": FINANCED, "position_limits": [-2, 2]} if financed else {}))
    if financed:  # dividends on every 20th bar too: the income path is compiled as well
        m.dividend[::20] = 0.004
        assert m.has_income
    m.min_equity = 0.9  # bankruptcies happen: terminations as well as truncations are compared
    envs = [
        MarketEnv(m, "train", 6, generator=torch.Generator().manual_seed(3), episode_length=25, compile=c)
        for c in (False, True)
    ]
    if rows:
        for env in envs:
            env._windows = None  # the row-by-row gather (what envs over their own paths use)
    seen = assert_same_walk(*envs, steps=80, scale=3.0)
    assert seen["terminated"] > 0 and seen["truncated"] > 0


def test_compiled_step_without_auto_reset_keeps_the_returned_bar():
    """Evaluation-style walk (no auto-reset) agrees, and ``info['t']`` survives the env resetting in place."""
    m = synthetic_market(n_bars=400, window=8)
    eager, fused = (MarketEnv(m, "val", 2, random_start=False, compile=c) for c in (False, True))
    assert_same_walk(eager, fused, steps=eager.max_len - 1)
    fused.reset()
    _, _, _, _, info = fused.step(torch.zeros(2))
    reached = info["t"].clone()
    fused.reset()
    assert torch.equal(info["t"], reached) and not torch.equal(fused.t, reached)


def test_compiled_augmented_env_walks_the_same_paths_across_generations():
    market = build_market(TSLA, name="tsla", source="tsla", data_hash="x", costs=FINANCED)
    aug = Augmenter({"warp": MagnitudeWarp(p=1.0, sigma=0.5)})
    envs = [
        AugmentedEnv(market, 4, aug, torch.Generator().manual_seed(2), min_path=16, episode_length=16, compile=c)
        for c in (False, True)
    ]
    assert_same_walk(*envs, steps=40)
    assert envs[0].generations == envs[1].generations == 3


@pytest.mark.parametrize("flag", [False, True])
def test_the_compile_key_reaches_the_training_env(flag, tmp_path):
    from src.core.utils import build
    from src.training.module import PPOModule

    cfg = compose_cfg([*TINY, f"compile={str(flag).lower()}"], tmp_path)
    module = PPOModule(cfg, build(cfg.env))
    env = module._train_env(torch.Generator().manual_seed(0))
    assert (env._fused is not None) is flag
