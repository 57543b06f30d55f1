"""Curiosity (RND), replay (uniform / prioritized / HER self-imitation) and GRPO: the maths against
hand-computed values, and each option end to end through the CLI and through a kill and resume
(each add-on's specific effect: tests/rl/test_addons.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from src.core.checkpoint import load_checkpoint
from src.core.errors import ConfigError
from src.core.utils import build
from src.envs.market_env import Obs
from src.rl.grpo import group_advantages, grpo_loss, kl_k3
from src.rl.her import relabel_future, window_goal
from src.rl.replay import ReplayBuffer, ReplayConfig, SumTree, annealed_beta, importance_weights, sil_loss
from src.rl.rnd import RND
from src.rl.value_norm import RunningMeanStd
from src.train import train
from src.training.module import PPOModule
from tests.conftest import ROOT, TINY, compose_cfg
from tests.helpers import outcome, run_killed_and_resumed, tensorboard_scalars

# ---- sum-tree and prioritized replay ----


def test_sum_tree_sampling_frequencies_follow_priority_to_the_alpha():
    alpha, p = 0.6, torch.tensor([0.1, 1.0, 2.0, 5.0, 0.0, 3.0, 0.5])
    tree = SumTree(7)
    tree.update(torch.arange(7), p**alpha)
    assert float(tree.total) == pytest.approx(float((p**alpha).sum()))
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    idx = torch.cat([tree.sample(1000, 7, gen) for _ in range(n // 1000)])
    freq = torch.bincount(idx, minlength=7).double() / n
    expected = (p**alpha / (p**alpha).sum()).double()
    assert freq[4] == 0  # a zero priority is never drawn
    # binomial standard error <= 0.0012 at n = 200k: 5 sigma
    assert torch.allclose(freq, expected, atol=0.006)


def test_sum_tree_update_recomputes_ancestors_with_duplicate_indices():
    tree = SumTree(5)  # padded to 8 leaves
    tree.update(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    tree.update(torch.tensor([2, 2]), torch.tensor([10.0, 10.0]))
    assert float(tree.total) == 22.0
    assert tree.find(torch.tensor([0.5, 1.5, 3.2, 12.9, 13.0, 21.9])).tolist() == [0, 1, 2, 2, 3, 4]


def test_importance_weights_match_the_formula():
    # stored p^alpha = 1, 2, 3, 4 -> P = .1 .2 .3 .4, N = 4, beta = .5: w = (N P)^-beta / sum_j P_j (N P_j)^-beta
    w = importance_weights(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 3, 1]), 0.5)
    raw = [(4 * 0.1) ** -0.5, (4 * 0.4) ** -0.5, (4 * 0.2) ** -0.5]
    norm = 0.1 * 0.4**-0.5 + 0.2 * 0.8**-0.5 + 0.3 * 1.2**-0.5 + 0.4 * 1.6**-0.5  # = 0.9286
    assert w.tolist() == pytest.approx([r / norm for r in raw])
    assert w.tolist() == pytest.approx([1.6270, 0.8135, 1.1505], abs=1e-4)
    assert annealed_beta(0.4, 0.0) == 0.4 and annealed_beta(0.4, 0.5) == pytest.approx(0.7)
    assert annealed_beta(0.4, 2.0) == 1.0


def test_prioritized_buffer_refreshes_priorities_and_wraps_around():
    cfg = ReplayConfig(kind="prioritized", capacity=6, batch_size=2, alpha=1.0, eps=1e-6)
    rb = ReplayBuffer(cfg, window=3, num_features=2, device="cpu")
    obs = Obs(torch.arange(4 * 6, dtype=torch.float32).view(4, 3, 2), torch.zeros(4, 1))
    rb.add(obs, torch.zeros(4), torch.arange(4, dtype=torch.float32))
    assert rb.tree.leaves(4).tolist() == [1.0] * 4  # new transitions enter at the max priority
    rb.update_priorities(torch.tensor([0, 1, 2, 3]), torch.tensor([0.0, 3.0, -1.0, 1.0]))
    assert rb.tree.leaves(4).tolist() == pytest.approx([1e-6, 3.0 + 1e-6, 1e-6, 1.0 + 1e-6])
    rb.add(obs, torch.ones(4), torch.full((4,), 9.0))  # 8 into 6 slots: overwrites the two oldest
    assert rb.size == 6 and rb.ptr == 2 and rb.returns.tolist() == [9.0, 9.0, 2.0, 3.0, 9.0, 9.0]
    assert rb.tree.leaves(6)[[0, 1, 4, 5]].tolist() == pytest.approx([3.0 + 1e-6] * 4)  # entered at the max


def test_sil_loss_imitates_only_better_than_expected_transitions():
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    value = torch.tensor([1.0, 3.0, 0.0], requires_grad=True)
    returns = torch.tensor([2.0, 1.0, 0.5])
    loss, gap, _ = sil_loss(logp, value, returns, torch.tensor([1.0, 1.0, 0.5]), value_coef=0.01)
    assert gap.tolist() == [1.0, 0.0, 0.5]
    pol = -(-1.0 * 1.0 + 0.0 + -0.5 * 0.5 * 0.5) / 3
    val = 0.5 * (1.0 + 0.0 + 0.5 * 0.25) / 3
    assert loss.item() == pytest.approx(pol + 0.01 * val)
    loss.backward()
    assert logp.grad.tolist() == pytest.approx([-1 / 3, 0.0, -0.25 / 3])  # raise log pi of good actions
    assert value.grad[1] == 0 and value.grad[0] < 0  # V is pulled up only where R > V


# ---- HER ----


def test_her_relabels_with_goals_the_window_met_and_recomputes_their_rewards():
    # a 4-bar window of daily bars: the training range, in log growth over the window, is 0.015-0.04, so the
    # growth of 0.01 reached at t = 0 met no goal of it and 0.05 at t = 3 meets all of them
    bpy = 252.0
    lo, hi = math.expm1(0.015 * bpy / 4), math.expm1(0.04 * bpy / 4)
    cfg = ReplayConfig(
        kind="her", her_k=64, her_horizon=4, goal_weight=0.5, capacity=64, batch_size=4, goal_low=lo, goal_high=hi
    )
    gamma, scale = 0.9, 100.0
    # one env, a window of 4 bars that ends at t = 3, then an open window (t = 4, 5)
    c_before = torch.tensor([0.0, 0.01, 0.03, 0.02, 0.0, -0.01])[:, None]
    c_after = torch.tensor([0.01, 0.03, 0.02, 0.05, -0.01, 0.02])[:, None]
    g = torch.full((6, 1), 0.02)  # the original goal: met after steps 1, 2 and 3, whose rewards a relabel may lose
    rec = {
        "c_before": c_before,
        "c_after": c_after,
        "goal": g,
        "j": torch.tensor([0, 1, 2, 3, 0, 1])[:, None],
        "end": torch.tensor([False, False, False, True, False, False])[:, None],
    }
    returns = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])[:, None]
    stored, goals, feats, ret = relabel_future(rec, returns, cfg, gamma, scale, bpy, torch.Generator().manual_seed(1))
    assert not stored[:, 4:].any()  # the open window is not relabelled
    assert 0.6 < float(stored[:, 0].float().mean()) < 0.9  # t' = 0 (growth 0.01) meets no goal: ~1/4 dropped
    assert bool(stored[:, 1:4].all())
    for t in range(4):
        achieved = c_after[t:4, 0]
        for k in range(cfg.her_k):
            if not stored[k, t, 0]:
                continue
            gk = float(goals[k, t, 0])
            assert 0.015 - 1e-6 <= gk <= 0.04 + 1e-6  # a goal of the training range ...
            assert bool((achieved >= gk).any())  # ... met at or after t in the same window
            change = [float(c_after[t + d, 0] >= gk) - float(c_after[t + d, 0] >= 0.02) for d in range(4 - t)]
            expect = returns[t, 0] + sum(gamma**d * cfg.goal_weight * x for d, x in enumerate(change))
            assert float(ret[k, t, 0]) == pytest.approx(float(expect), abs=1e-6)
            assert float(feats[k, t, 0, 0]) == pytest.approx(float((gk - c_before[t, 0]) * scale), abs=1e-4)
            assert float(feats[k, t, 0, 1]) == pytest.approx((4 - t) / 4)
    # relabels of t = 3 (growth 0.05 >= every goal of the range) spread over the whole range
    top = goals[:, 3, 0]
    assert float(top.min()) < 0.02 and float(top.max()) > 0.035
    assert bool((stored & (ret < returns - 1e-3)).any())  # some relabels lose the original goal's rewards


def test_window_goal_is_the_annualised_log_growth_per_window():
    assert float(window_goal(0.05, 16, 252.0)) == pytest.approx(math.log(1.05) * 16 / 252)


# ---- ICM ----


def test_running_std_matches_the_batch_statistics():
    rms, x = RunningMeanStd(eps=1e-12), torch.randn(1000, dtype=torch.float64) * 3 + 1
    for chunk in x.split(137):
        rms.update(chunk)
    assert float(rms.mean) == pytest.approx(float(x.mean()), abs=1e-9)
    assert float(rms.std) == pytest.approx(float(x.std(unbiased=False)), rel=1e-9)


def test_rnd_bonus_falls_where_the_predictor_has_learned_and_refuses_bad_settings():
    torch.manual_seed(0)
    rnd = RND(num_features=3, window=4, hidden=32)
    seen = Obs(torch.randn(256, 4, 3), torch.rand(256, 1))
    before = rnd.bonus(seen).mean()  # fixes the running std
    opt = torch.optim.Adam(rnd.predictor.parameters(), lr=3e-3)
    for _ in range(300):
        loss = rnd.error(seen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(rnd.bonus(seen, update_stats=False).mean()) < 0.1 * float(before)
    assert all(not w.requires_grad for w in rnd.target.parameters())  # the random target stays fixed
    with pytest.raises(ConfigError, match="curiosity.freqs"):
        RND(3, 4, freqs=0)
    assert RND(3, 4, weight=0.2, decay=0.5).weight_at(2) == pytest.approx(0.05)


# ---- GRPO ----


def test_group_advantages_are_zero_mean_and_unit_std_per_group():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, -1.0, 0.0, 0.5, 7.0])
    adv = group_advantages(r, 4).view(3, 4)
    assert torch.allclose(adv.mean(1), torch.zeros(3), atol=1e-6)
    assert adv[1].tolist() == [0.0] * 4  # equal outcomes: nothing to prefer
    assert adv[0].std(unbiased=False) == pytest.approx(1.0, abs=1e-6)
    assert adv[0].tolist() == pytest.approx([(x - 2.5) / math.sqrt(1.25) for x in (1, 2, 3, 4)])
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(r, 5)


def test_grpo_loss_is_the_clipped_objective_plus_the_k3_kl():
    assert float(kl_k3(torch.tensor(0.0), torch.tensor(math.log(2.0)))) == pytest.approx(2 - math.log(2) - 1)
    new = torch.tensor([0.0, math.log(1.5), 0.0])
    old = torch.zeros(3)
    ref = torch.tensor([0.0, 0.0, math.log(2.0)])
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss, stats = grpo_loss(new, old, ref, adv, clip=0.2, kl_coef=0.1, mask=torch.tensor([True, True, False]))
    pg = (-1.0 + -1.2) / 2  # second ratio 1.5 is clipped to 1.2 for a positive advantage; third masked
    kl = (0.0 + (1 / 1.5 - math.log(1 / 1.5) - 1)) / 2
    assert float(loss) == pytest.approx(pg + 0.1 * kl)
    assert float(stats["clipfrac"]) == pytest.approx(0.5)


# ---- end to end ----

GRPO_TINY = [t for t in TINY if not t.startswith("algo.")] + [
    "algo=grpo",
    "algo.num_groups=2",
    "algo.group_size=4",
    "algo.horizon=32",
    "algo.update_epochs=2",
    "algo.num_minibatches=2",
]
SMALL_REPLAY = ["replay.capacity=512", "replay.batch_size=64"]


def test_every_option_trains_through_the_cli_and_logs_its_own_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        *TINY,
        "curiosity=rnd",
        "replay=uniform,prioritized,her",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${replay.kind}",
    ]
    grpo = [sys.executable, "-m", "src.train", *GRPO_TINY, f"hydra.run.dir={tmp_path / 'grpo'}"]
    for c in (cmd, grpo):
        proc = subprocess.run(c, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    own = {
        "uniform": {"losses/sil_policy_loss", "losses/sil_positive_frac", "replay/size", "replay/stored"},
        "prioritized": {"losses/sil_is_weight_mean", "replay/priority_mean", "replay/beta"},
        "her": {"her/goal_reward_mean", "her/stored", "her/relabel_return_gain"},
    }
    rnd = {"curiosity/intrinsic_reward_mean", "curiosity/action_effect", "losses/rnd_predictor_loss"}
    for kind, tags in own.items():
        logged = tensorboard_scalars(sweep / kind)
        assert tags | rnd <= logged, (kind, sorted(logged))
        assert json.loads((sweep / kind / "metrics.json").read_text())["test"]["agent"]["sharpe"] is not None
    logged = tensorboard_scalars(tmp_path / "grpo")
    assert {"grpo/within_group_std", "losses/kl_ref", "losses/policy_loss"} <= logged
    assert "losses/value_loss" not in logged  # GRPO trains no critic


def test_grpo_refuses_replay_and_groups_share_their_start(tmp_path, capsys):
    from src.data import build_market
    from src.data.synthetic import generate_bars
    from src.envs.market_env import MarketEnv

    with pytest.raises(SystemExit):
        train(compose_cfg([*GRPO_TINY, "replay=uniform"], tmp_path))
    assert "SelfImitation needs a critic" in capsys.readouterr().err
    m = build_market(generate_bars(n_bars=400, seed=0), name="s", source="x", data_hash="0", window=8)
    env = MarketEnv(m, "train", 8, generator=torch.Generator().manual_seed(0), episode_length=16, group_size=4)
    env.reset()
    t = env.t.view(2, 4)
    assert (t == t[:, :1]).all() and env.max_len == 16


@pytest.mark.parametrize(
    "extra", [["curiosity=rnd", "replay=prioritized"], ["replay=her"], ["ensemble=three"], GRPO_TINY]
)
def test_add_on_state_survives_a_kill_and_resume(tmp_path, extra):
    base = [*TINY, *extra] if extra is not GRPO_TINY else GRPO_TINY
    over = [*base, "trainer.max_steps=24", "trainer.val_check_interval=2"]
    over += SMALL_REPLAY if any(x.startswith("replay=") for x in extra) else []
    full, cut, ckpt = run_killed_and_resumed(tmp_path, over)
    saved = ckpt["tradelab"]
    assert saved["iterations"] == 4
    if "curiosity=rnd" in extra:
        replay = saved["addons"]["SelfImitation"]["replay"]
        assert replay["size"] > 0 and float(replay["tree"].sum()) > 0
        assert any(k.startswith("curiosity.predictor") for k in ckpt["state_dict"])
    elif "replay=her" in extra:
        her = saved["addons"]["Hindsight"]
        assert her["replay"]["size"] > 0 and "goals" in her and "relabel_generator" in her
    elif "ensemble=three" in extra:
        assert "members" in saved["addons"]["Diversity"]
    else:  # GRPO: the frozen reference travels with the weights
        assert any(k.startswith("rule.ref.") for k in ckpt["state_dict"])
    assert outcome(cut) == outcome(full)


@pytest.mark.parametrize("optimizer", ["sgd", "muon", "shampoo", "soap"])
def test_grpo_trains_with_every_optimizer_and_leaves_the_critic_untouched(tmp_path, optimizer):
    cfg = compose_cfg([*GRPO_TINY, f"optimizer={optimizer}", "trainer.max_steps=4"], tmp_path)
    train(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # the same initial weights as the run
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    fresh = PPOModule(job, build(cfg.env)).model.state_dict()
    trained = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    critic = [k for k in fresh if k.startswith("critic.")]
    actor = [k for k in fresh if k.startswith("actor.")]
    assert critic and all(torch.equal(trained[f"model.{k}"], fresh[k]) for k in critic)
    assert any(not torch.equal(trained[f"model.{k}"], fresh[k]) for k in actor)
