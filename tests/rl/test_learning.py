"""Learning tests: the agent and its add-ons learn what a task plants, within a fixed budget (seconds each).

Each fails when the piece it is about is switched off or broken (the note on issue 19 says what was tried).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from src.envs.market_env import Obs
from src.models import mlp_actor_critic
from src.rl.addons import Iteration
from src.rl.ppo import PPOConfig
from src.rl.sil import SelfImitation


def test_ppo_learns_the_planted_signal_to_half_the_oracles_sharpe(tmp_path):
    """Plain PPO (small MLP, 640 gradient steps) on a market whose returns are AR(1) with rho = 0.2: on a fresh
    market it never saw (5,000 bars, another seed), its Sharpe reaches at least half the oracle's, which holds
    sign(last return) (~2.8). A policy that learned nothing scores ~0 (+- 0.2, the Sharpe's standard error)."""
    from src.core.checkpoint import load_checkpoint
    from src.data.synthetic import planted_market
    from src.evaluation.walk import ModelPolicy, evaluate_split
    from src.train import train
    from src.training.module import PPOModule
    from tests.conftest import compose_cfg

    over = [
        "env=planted",
        "env.n_bars=3000",
        "env.window=8",
        "env.episode_length=64",
        "model=mlp",
        "model.hidden=[32,32]",
        "model.head_hidden=32",
        "algo.num_envs=16",
        "algo.rollout_steps=64",
        "lr_scale=3",
        "trainer.max_steps=640",
        "trainer.val_check_interval=20",
    ]
    train(compose_cfg(over, tmp_path))
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    fresh = planted_market(n_bars=5000, seed=123, window=8, episode_length=64)
    module = PPOModule(ckpt["hyper_parameters"]["cfg"], fresh)
    module.load_state_dict(ckpt["state_dict"])
    agent = evaluate_split(fresh, "train", ModelPolicy(module.model.eval()))["agent"].metrics["sharpe"]
    oracle = evaluate_split(fresh, "train", lambda o: torch.sign(o.market[:, -1, 0]))["agent"].metrics["sharpe"]
    assert oracle > 2.0
    assert agent > 0.5 * oracle, (agent, oracle)


TARGETS = torch.linspace(-0.9, 0.9, 12)


def _harness(addon, n: int, seed: int = 0):
    """Set up ``addon`` as the LightningModule would, for a one-step task with (4, 3) observations."""
    module = SimpleNamespace(
        market=SimpleNamespace(window=4, num_features=3, bars_per_year=1.0, device="cpu"),
        device="cpu",
        ppo=SimpleNamespace(gamma=0.99, rollout_steps=1, num_envs=n, reward_scale=100.0),
        env=SimpleNamespace(max_len=1),
        cfg=SimpleNamespace(seed=seed),
        global_rank=0,
    )
    addon.setup(module)
    return addon


def _train_one_step(model, addons, iterations: int, n: int, g: torch.Generator, draw, outcome) -> None:
    """PPO (plus ``addons``) on one-step episodes, as the LightningModule runs an iteration: rollout, rewards
    (each add-on's hook), targets, observe, 4 epochs of 4 minibatches. ``draw(n) -> (ctx, obs)``;
    ``outcome(ctx, obs, actions) -> (rewards, extra rollout fields)``."""
    rule = PPOConfig(num_envs=n, rollout_steps=1, num_minibatches=4, update_epochs=4).rule(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    row = lambda x: x.reshape(1, n, *x.shape[1:])  # noqa: E731
    done = torch.ones(1, n, dtype=torch.bool)
    for i in range(iterations):
        ctx, obs = draw(n)
        with torch.no_grad():
            dist, v = model(obs)
            a = dist.sample()
        r, extra = outcome(ctx, obs, a)
        b = SimpleNamespace(
            rewards=row(r), values=row(v), next_values=row(torch.zeros(n)), terminated=done, truncated=~done,
            dones=done, actions=row(a), logprobs=row(dist.log_prob(a)), market=obs.market[None],
            position=obs.position[None], flat_obs=lambda obs=obs: obs, member=None, **extra,
        )  # fmt: skip
        it = Iteration(b, None, i, i / iterations)
        rewards = b.rewards
        for addon in addons:
            rewards = addon.rewards(it, rewards)
        batch = rule.targets(it, rewards)
        for addon in addons:
            addon.observe(it, rule, batch, rewards)
        for _ in range(4):
            for idx in torch.randperm(n, generator=g).split(n // 4):
                mb = batch.take(idx)
                loss, terms = rule.loss(model, mb)
                for addon in addons:
                    term = addon.loss(model, mb, idx, it, rule, terms)
                    loss = loss if term is None else loss + term
                opt.zero_grad()
                loss.backward()
                opt.step()
                for addon in addons:
                    addon.after_step()


def _sparse_task(sil: bool, seed: int, iterations: int = 40, n: int = 256, tol: float = 0.05) -> float:
    """A sparse-reward task: 12 contexts (one-hot observations), each paying 1 only for a position within
    ``tol`` of its own target in [-0.9, 0.9] (1.5-7.5% of the initial policy's draws), else 0; one-step
    episodes. PPO alone, or with self-imitation from prioritized replay (the add-on as ``replay=prioritized``
    builds it). Returns the trained policy's success rate on 16,384 fresh draws."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = mlp_actor_critic(3, 4, hidden=(32,), head_hidden=32)
    addons = [_harness(SelfImitation(kind="prioritized", capacity=2048, batch_size=64), n)] if sil else []

    def draw(k: int) -> tuple[torch.Tensor, Obs]:
        ctx = torch.randint(0, 12, (k,), generator=g)
        return ctx, Obs(F.one_hot(ctx, 12).float().view(k, 4, 3), torch.zeros(k, 1))

    def outcome(ctx, obs, a):
        return ((a - TARGETS[ctx]).abs() < tol).float(), {}

    _train_one_step(model, addons, iterations, n, g, draw, outcome)
    ctx, obs = draw(16384)
    with torch.no_grad():
        return float(((model(obs)[0].sample() - TARGETS[ctx]).abs() < tol).float().mean())


def test_self_imitation_learns_a_sparse_reward_task_faster_than_plain_ppo():
    """At the same budget (40 iterations) self-imitation reaches a higher success rate on both seeds; on 4 seeds
    measured, +0.010 to +0.015 over PPO's ~0.10 (a success rate's standard error here: 0.0024)."""
    ppo = [_sparse_task(False, s) for s in (0, 1)]
    sil = [_sparse_task(True, s) for s in (0, 1)]
    assert all(s > p for s, p in zip(sil, ppo, strict=True)), (ppo, sil)
    assert sum(sil) / 2 > sum(ppo) / 2 + 0.006, (ppo, sil)


def _goal_task(her_k: int, seed: int, iterations: int = 30, n: int = 256) -> float:
    """A goal task: 12 contexts (one-hot), each with a hidden direction s = +-1; a position a grows equity by
    0.01 a s in one step (a one-bar goal window, one bar a year so goals are in plain growth). The goal is to
    grow at least g, drawn as ``replay=her`` draws it (annual 0.5%-0.95%, about 0.5-0.95 of the most a step
    can give); the only reward is HER's goal reward. Self-imitation of goal-conditioned transitions, with
    ``her_k`` relabels each or none (``her_k=0``). Returns the success rate on 16,384 fresh (context, goal)."""
    from src.rl.her import Hindsight, goal_features, window_goal

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    sign = torch.tensor([1.0, -1.0]).repeat(6)[torch.randperm(12, generator=g)]
    model = mlp_actor_critic(3, 4, hidden=(32,), head_hidden=32, goal_dim=2)
    her = Hindsight(
        kind="her", capacity=4096, batch_size=64, her_k=her_k, her_horizon=1, goal_low=0.005, goal_high=0.0095
    )
    _harness(her, n, seed=seed)
    zero = torch.zeros(n, dtype=torch.long)

    def draw(k: int) -> tuple[torch.Tensor, Obs]:
        ctx = torch.randint(0, 12, (k,), generator=g)
        goal = window_goal(0.005 + 0.0045 * torch.rand(k, generator=g), 1, 1.0)
        feats = goal_features(goal, torch.zeros(k), torch.zeros(k, dtype=torch.long), 1, 100.0)
        return ctx, Obs(F.one_hot(ctx, 12).float().view(k, 4, 3), torch.zeros(k, 1), feats)

    def outcome(ctx, obs, a):
        c, goal = 0.01 * a * sign[ctx], obs.goal[:, 0] / 100.0
        rec = {"c_before": torch.zeros(n), "c_after": c, "goal": goal, "j": zero, "end": torch.ones(n, dtype=bool)}
        rec["goal_reward"] = (c >= goal).float()
        return torch.zeros(n), {"goal": obs.goal[None], "her": {k: v[None] for k, v in rec.items()}}

    _train_one_step(model, [her], iterations, n, g, draw, outcome)
    ctx, obs = draw(16384)
    with torch.no_grad():
        return float((0.01 * model(obs)[0].sample() * sign[ctx] >= obs.goal[:, 0] / 100.0).float().mean())


def test_hindsight_relabelling_reaches_goals_more_often_than_no_relabelling():
    """At the same budget (30 iterations) relabelling reaches more goals on both seeds: measured on 6 seeds,
    0.354 +- 0.086 against 0.189 +- 0.060 without relabels (6 of 6 higher). Relabelling with the growth achieved,
    inside the goal range or not (the earlier rule), gave 0.117 +- 0.009."""
    plain = [_goal_task(0, s) for s in (0, 1)]
    her = [_goal_task(4, s) for s in (0, 1)]
    assert all(h > p for h, p in zip(her, plain, strict=True)), (plain, her)
    assert sum(her) / 2 > sum(plain) / 2 + 0.08, (plain, her)
