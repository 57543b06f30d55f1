"""Augmentation (training paths rebuilt from transformed bars, indicators recomputed) and curriculum:
the maths against direct computations, the honesty guarantees, and (with an ensemble) end to end
through the CLI and through a kill and resume."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from src.data.augment import Augmenter, CutMix, Jitter, MagnitudeWarp, MixUp, TimeWarp, WindowSlice, bar_parts, rebuild
from src.data.features import compute_features, warmup_bars
from src.data.loader import load_ohlcv
from src.data.market import build_market
from src.data.torch_features import path_features
from src.envs.augmented_env import WARMUP, AugmentedEnv
from src.envs.market_env import MarketEnv
from src.evaluation.walk import evaluate_split
from src.training.curriculum import Curriculum, adaptive_step, linear_difficulty, pooled_sharpe
from tests.conftest import ROOT, TINY
from tests.helpers import outcome, run_killed_and_resumed

TSLA = load_ohlcv(ROOT / "data" / "tsla_daily.csv")


def _t(s) -> torch.Tensor:
    return torch.tensor(np.array(s, dtype=np.float64))


def _real_parts(n_paths: int = 64, length: int = 200, seed: int = 0) -> torch.Tensor:
    """(B, S, 5) parts of real TSLA segments."""
    all_parts = bar_parts(*(_t(TSLA[k]) for k in ("open", "high", "low", "close", "volume")))
    starts = torch.randint(1, len(TSLA) - length, (n_paths,), generator=torch.Generator().manual_seed(seed))
    return all_parts[starts[:, None] + torch.arange(length)]


# ---- features and bars ----


def test_torch_features_equal_the_pandas_features_on_real_bars():
    seg = TSLA.iloc[1000:1400]
    ref = compute_features(seg).to_numpy()[warmup_bars() :]
    got = path_features(*(_t(seg[k])[None] for k in ("open", "high", "low", "close", "volume")))[0].numpy()
    np.testing.assert_allclose(got[warmup_bars() :], ref, rtol=1e-9, atol=1e-12)


def test_bars_rebuilt_from_their_parts_are_the_same_bars():
    seg = TSLA.iloc[500:700]
    o, h, lo, c, v = (_t(seg[k]) for k in ("open", "high", "low", "close", "volume"))
    ro, rh, rl, rc, rv = rebuild(bar_parts(o, h, lo, c, v)[None])
    scale = o[0]  # the first bar has no previous close: the rebuilt path starts from 1 at its open
    for got, want in ((ro, o), (rh, h), (rl, lo), (rc, c)):
        np.testing.assert_allclose((got[0] * scale).numpy(), want.numpy(), rtol=1e-9)
    np.testing.assert_allclose(rv[0].numpy(), v.numpy(), rtol=1e-9)


# ---- each transform: shapes, valid bars and the effect it claims ----

ALL = [Jitter(), MagnitudeWarp(), TimeWarp(), WindowSlice(), MixUp(), CutMix()]


@pytest.mark.parametrize("tr", ALL, ids=lambda t: t.name)
def test_every_transform_keeps_shapes_and_gives_valid_bars(tr):
    x = _real_parts()
    y, stats = tr.apply(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y[..., 2:4] >= 0).all()  # wicks stay wicks: high >= max(open, close), low <= min
    o, h, lo, c, _ = rebuild(y)
    assert (h >= torch.maximum(o, c) - 1e-12).all() and (lo <= torch.minimum(o, c) + 1e-12).all()
    assert all(v.shape == (x.shape[0],) for v in stats.values())
    assert not torch.equal(y, x)


def test_jitter_adds_noise_of_the_stated_size_to_returns_only():
    x = _real_parts(256)
    y, _ = Jitter(sigma=0.1).apply(x, torch.Generator().manual_seed(2))
    assert torch.equal(y[..., 2:], x[..., 2:])  # wicks and volume untouched
    ratio = (y - x)[..., :2].std(dim=1) / x[..., :2].std(dim=1)
    assert float(ratio.mean()) == pytest.approx(0.1, rel=0.1)
    # bar by bar: noise / trailing RMS of the 20 bars before is standard normal, times sigma
    rms = Jitter.trailing_rms(x[..., :2], 20)
    z = ((y - x)[:, 20:, :2] / rms[:, 20:]).flatten()
    assert float(z.std()) == pytest.approx(0.1, rel=0.05)
    r = torch.tensor([[[3.0], [4.0], [0.0], [5.0]]])
    torch.testing.assert_close(  # by hand: bar 0 its own size; then sqrt(9/1), sqrt(25/2), sqrt(25/2) (lookback 2)
        Jitter.trailing_rms(r, 2).flatten(), torch.tensor([3.0, 3.0, (12.5) ** 0.5, (8.0) ** 0.5])
    )


def test_jitter_noise_is_causal():
    # the noise on bars up to t must not depend on the bars after t (the old scale, the path's whole std, did)
    x = _real_parts(128)
    later = x.clone()
    later[:, 64:, :2] *= 3.0  # a violent second half
    a, _ = Jitter(sigma=0.1).apply(x, torch.Generator().manual_seed(5))
    b, _ = Jitter(sigma=0.1).apply(later, torch.Generator().manual_seed(5))
    torch.testing.assert_close((a - x)[:, :64], (b - later)[:, :64], rtol=0, atol=0)


def test_magnitude_warp_changes_return_variance():
    x = _real_parts(512)
    tr = MagnitudeWarp(sigma=0.4)
    y, stats = tr.apply(x, torch.Generator().manual_seed(3))
    ratio = (y[..., 1].var(dim=1) / x[..., 1].var(dim=1)).log()
    assert float(ratio.std()) > 0.2  # each episode's volatility is rescaled differently
    assert float(stats["scale_dev"].mean()) > 0.1
    # the sign of every return is kept (the curve is >= 0); only magnitudes change
    assert ((y[..., 1] * x[..., 1]) >= 0).all()


def test_time_warp_moves_whole_real_bars_and_keeps_the_sign_balance():
    x = _real_parts(256)
    y, stats = TimeWarp(sigma=0.4).apply(x, torch.Generator().manual_seed(4))
    # every output bar is one of the episode's own bars, in time order
    match = (y[:, :, None, :] == x[:, None, :, :]).all(-1)  # (B, S_out, S_in)
    assert match.any(-1).all()
    src = match.float().argmax(-1)
    assert (src.diff(dim=1) >= 0).all()
    pos_in, pos_out = float((x[..., 1] > 0).double().mean()), float((y[..., 1] > 0).double().mean())
    assert pos_out == pytest.approx(pos_in, abs=0.02)
    assert float(stats["shift_bars"].mean()) > 1.0


def test_window_slice_stretches_a_contiguous_slice():
    x = _real_parts(32, length=100)
    y, _ = WindowSlice(ratio=0.8).apply(x, torch.Generator().manual_seed(5))
    match = (y[:, :, None, :] == x[:, None, :, :]).all(-1)
    src = match.float().argmax(-1)
    span = src[:, -1] - src[:, 0]
    assert ((span - 0.8 * 99).abs() <= 1).all() and (src.diff(dim=1) >= 0).all()


def test_mixup_blends_two_segments_and_lambda_one_returns_the_first_exactly():
    x = _real_parts(16)
    partner = x.flip(0)
    assert torch.equal(MixUp.mix(x, partner, torch.ones(16, dtype=x.dtype)), x)
    assert torch.equal(MixUp.mix(x, partner, torch.zeros(16, dtype=x.dtype)), partner)
    y, stats = MixUp(alpha=0.4).apply(x, torch.Generator().manual_seed(6))
    lam = stats["lambda"]
    assert ((lam > 0) & (lam < 1)).all()
    # each output is lam x + (1 - lam) y for some other segment y of the batch
    for i in range(16):
        other = (y[i] - lam[i] * x[i]) / (1 - lam[i])
        assert any(torch.allclose(other, x[j], atol=1e-9) for j in range(16))


def test_cutmix_splices_one_span_of_another_segment():
    x = _real_parts(32, length=120)
    y, stats = CutMix(alpha=1.0).apply(x, torch.Generator().manual_seed(7))
    changed = (y != x).any(-1)  # (B, S)
    for i in range(32):
        idx = changed[i].nonzero().flatten()
        if len(idx):
            assert int(idx[-1] - idx[0] + 1) <= round(float(stats["cut_fraction"][i]) * 120)
    assert float(stats["cut_fraction"].mean()) == pytest.approx(0.5, abs=0.15)  # Beta(1, 1): half on average


def test_augmenter_applies_each_transform_with_its_probability_and_reports_it():
    aug = Augmenter({"j": Jitter(p=0.3), "m": MixUp(p=1.0)})
    x = _real_parts(2000, length=40)
    _, stats = aug(x, torch.Generator().manual_seed(8))
    assert float(stats["jitter/rate"]) == pytest.approx(0.3, abs=0.04)
    assert float(stats["mixup/rate"]) == 1.0 and 0 < float(stats["mixup/lambda"]) < 1
    with pytest.raises(ValueError, match="probability|p must"):
        Jitter(p=1.5)


# ---- the augmented env: training only, observations and rewards from the same path ----


@pytest.fixture(scope="module")
def market():
    return build_market(TSLA, name="tsla", source="tsla", data_hash="x", costs={"commission_bps": 1, "spread_bps": 2})


def test_unaugmented_paths_are_the_real_training_bars(market):
    env = AugmentedEnv(market, 4, Augmenter(), torch.Generator().manual_seed(0), min_path=64)
    env.reset()
    s, w = env.span, market.window
    first_bar = env.segment_starts + WARMUP  # market bar of each path's first stored bar
    for e in range(4):
        bars = first_bar[e] + torch.arange(s)
        sl = slice(e * s, (e + 1) * s)
        torch.testing.assert_close(env._pre[sl], market.pre[bars], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(env._post[sl], market.post[bars], rtol=1e-5, atol=1e-7)
        # the indicators were recomputed from the path (warm-up of 105 bars): equal to the real ones
        assert float((env._feat[sl][w:] - market.features[bars][w:]).abs().max()) < 0.02
        assert int(bars[-1]) < market.splits["train"][1]  # training bars only


def test_augmented_env_pays_rewards_on_the_path_it_shows(market):
    aug = Augmenter({"mixup": MixUp(p=1.0), "warp": MagnitudeWarp(p=1.0, sigma=0.5)})
    env = AugmentedEnv(market, 8, aug, torch.Generator().manual_seed(1), min_path=32, episode_length=32)
    obs = env.reset()
    mean0, std0 = float(market.norm_mean[0]), float(market.norm_std[0])
    for _ in range(40):  # across a new generation of paths
        t = env.t.clone()
        torch.testing.assert_close(obs.market[:, -1], env._feat[t])  # the newest row is the decision bar's
        obs, reward, term, trunc, info = env.step(torch.ones(8))
        held = ~(term | trunc)
        # what a long position earned over the bar (before costs) is the close-to-close return the agent
        # then sees as the newest row's ret_1: rewards and observations come from the same rebuilt path
        earned = torch.log1p(env._pre[t + 1]) + torch.log1p(env._post[t + 1])
        seen = obs.market[:, -1, 0].double() * std0 + mean0
        torch.testing.assert_close(seen[held], earned[held].double(), rtol=1e-4, atol=1e-6)
        no_trade = held & (info["turnover"] == 0)
        torch.testing.assert_close(reward[no_trade], earned[no_trade], rtol=1e-4, atol=1e-7)
    assert env.generations == 2


def test_validation_and_test_are_never_augmented(market):
    before = {k: getattr(market, k).clone() for k in ("features", "pre", "post")}
    ref = {s: evaluate_split(market, s, None)["buy_and_hold"].ledger for s in ("val", "test")}
    env = AugmentedEnv(market, 8, Augmenter({"all": MagnitudeWarp(p=1.0)}), torch.Generator(), min_path=32)
    env.reset()
    for _ in range(100):
        env.step(torch.rand(8) * 2 - 1)
    for k, v in before.items():
        assert torch.equal(getattr(market, k), v)
    for s in ("val", "test"):
        assert evaluate_split(market, s, None)["buy_and_hold"].ledger.equals(ref[s])


def test_a_training_split_too_short_for_a_path_is_a_clear_error(market):
    from src.core.errors import ConfigError

    with pytest.raises(ConfigError, match="training path needs .* bars"):
        AugmentedEnv(market, 4, Augmenter(), torch.Generator(), min_path=5000)


# ---- curriculum ----


def test_linear_difficulty_follows_its_ramp():
    assert [linear_difficulty(s, 100, 0.5) for s in (0, 25, 50, 90)] == [0.0, 0.5, 1.0, 1.0]
    assert linear_difficulty(10, 100, 0.5, start=0.2) == pytest.approx(0.2 + 0.8 * 10 / 50)


def test_adaptive_difficulty_advances_retreats_and_stays_in_range():
    d, seq = 0.0, []
    for sharpe in (1.0, 1.0, 0.0, -1.0, -1.0, -1.0, 2.0):
        d = adaptive_step(d, sharpe, advance_at=0.5, retreat_at=-0.5, step=0.1)
        seq.append(round(d, 10))
    assert seq == [0.1, 0.2, 0.2, 0.1, 0.0, 0.0, 0.1]


def test_pooled_sharpe_matches_numpy():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(0.001, 0.02, 300) for _ in range(3)]
    x = np.concatenate(chunks)
    want = x.mean() / x.std(ddof=1) * math.sqrt(252)
    got = pooled_sharpe([(c.sum(), (c * c).sum(), c.size) for c in chunks], 252)
    assert got == pytest.approx(want, rel=1e-9)


class _Module:
    """What the curriculum callback reads from the LightningModule."""

    def __init__(self, env, market):
        self.env, self.market, self.grpo, self.last_train_returns = env, market, False, None


class _Trainer:
    def __init__(self, step=0, max_steps=100):
        self.global_step, self.max_steps, self.loggers = step, max_steps, []


@pytest.mark.parametrize("augmented", [False, True])
def test_difficulty_sets_length_costs_and_calm_regimes(market, augmented):
    gen = torch.Generator().manual_seed(0)
    env = (
        AugmentedEnv(market, 8, Augmenter(), gen, min_path=64)
        if augmented
        else MarketEnv(market, "train", 8, generator=gen)
    )
    cb = Curriculum(kind="linear", min_length=64, min_cost=0.25, min_regimes=0.3, ramp=0.5)
    module = _Module(env, market)
    cb.on_train_start(_Trainer(0), module)
    assert env.max_len == 64 and env.rate == pytest.approx(0.25 * market.costs.rate)
    order = cb.order  # every start, calm first, ranked once at the full episode length
    pool = env.start_pool
    assert len(pool) == math.ceil(0.3 * len(order))
    if not augmented:  # the episodes drawn now start only in the calmest 30%, by realised volatility
        vol = env._realised(order, 256)
        assert float(vol[: len(pool)].max()) <= float(vol[len(pool) :].min())
        env.reset()
        assert set(env.t.tolist()) <= set(pool.tolist())
    else:
        env.reset()
        assert set(env.segment_starts.tolist()) <= set(pool.tolist())
    cb.on_train_batch_start(_Trainer(50), module, None, 0)  # end of the ramp: the full task
    assert cb.difficulty == 1.0 and env.max_len == 256 and env.rate == market.costs.rate and env.start_pool is None


def test_adaptive_curriculum_follows_training_sharpe_and_survives_a_restore(market):
    env = MarketEnv(market, "train", 8, generator=torch.Generator().manual_seed(0))
    cb = Curriculum(kind="adaptive", window=2, advance_at=0.5, retreat_at=-0.5, step=0.25)
    module = _Module(env, market)
    cb.on_train_start(_Trainer(), module)
    good = torch.full((32, 8), 0.002) + torch.linspace(-1e-3, 1e-3, 256).view(32, 8)  # Sharpe >> 0.5
    bad = -good
    trajectory = []
    for r in (good, good, good, good, bad, bad):
        module.last_train_returns = r
        cb.on_train_batch_end(_Trainer(), module, None, None, 0)
        trajectory.append(cb.difficulty)
    # a change needs a full window of rollouts and `window` rollouts since the last change
    assert trajectory == [0.0, 0.25, 0.25, 0.5, 0.5, 0.25]
    assert env.max_len == cb.settings(0.25)["episode_length"]
    again = Curriculum(kind="adaptive", window=2, advance_at=0.5, retreat_at=-0.5, step=0.25)
    again.load_state_dict(cb.state_dict())
    fresh = MarketEnv(market, "train", 8, generator=torch.Generator())
    again.on_train_start(_Trainer(), _Module(fresh, market))
    assert again.difficulty == 0.25 and fresh.max_len == env.max_len and fresh.rate == env.rate
    assert torch.equal(fresh.start_pool, env.start_pool) and again.history == cb.history


# ---- end to end ----


# augmentation, an ensemble and a curriculum that advances at every rollout (so a change is seen in a tiny run)
ALL_THREE = [
    "augmentation=all",
    "ensemble=three",
    "curriculum=adaptive",
    "curriculum.window=1",
    "curriculum.advance_at=-100",
    "curriculum.retreat_at=-200",
]


def test_the_must_show_command_trains_and_logs_all_three(tmp_path):
    """augmentation=all ensemble=three curriculum=adaptive, in a tiny form (Muon: each member's own matrices)."""
    from tests.helpers import tensorboard_scalars

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        *TINY,
        *ALL_THREE,
        "optimizer=muon",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = tensorboard_scalars(run)
    for t in (
        "augment/jitter/rate",
        "augment/mixup/lambda",
        "augment/time_warp/shift_bars",
        "augment/generations",
        "curriculum/difficulty",
        "curriculum/episode_length",
        "curriculum/cost_multiplier",
        "ensemble/disagreement",
        "val/member_0_sharpe",
        "val/member_2_sharpe",
    ):
        assert t in tags, t
    report = (run / "report.md").read_text()
    assert "## Curriculum" in report and "0.00 -> 0.10" in report
    assert "## Ensemble members" in report and "| member 2 |" in report


def test_augmentation_ensemble_and_curriculum_survive_a_kill_and_resume(tmp_path):
    over = [
        *TINY,
        "trainer.max_steps=24",
        "trainer.val_check_interval=2",
        *ALL_THREE,
    ]
    full, cut, ckpt = run_killed_and_resumed(tmp_path, over)
    assert "augmented" in ckpt["tradelab"]["env"]  # the paths themselves travel with the checkpoint
    assert any("Curriculum" in k for k in ckpt["callbacks"])
    assert outcome(cut) == outcome(full)
