"""GAE and PPO losses against hand-computed numbers and a plain reference loop."""

from __future__ import annotations

import math

import pytest
import torch

from src.core.errors import ConfigError
from src.optim.schedules import lr_multiplier
from src.rl.gae import compute_gae
from src.rl.ppo import PPOConfig, explained_variance, normalize_advantages, policy_loss, value_loss


def _col(*x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)[:, None]


def _gae(term=(0, 0, 0), done=(0, 0, 0)):
    r, v, nv = _col(1, 2, 3), _col(0.5, 1.0, 1.5), _col(1.0, 1.5, 2.0)
    return compute_gae(r, v, nv, _col(*term).bool(), _col(*done).bool(), gamma=0.5, lam=0.5)


def test_gae_hand_computed():
    # deltas: 1 + .5*1 - .5 = 1; 2 + .5*1.5 - 1 = 1.75; 3 + .5*2 - 1.5 = 2.5; gamma*lam = .25
    adv, ret = _gae()
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.59375, 2.375, 2.5], dtype=torch.float64))
    torch.testing.assert_close(ret[:, 0], adv[:, 0] + torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))


def test_gae_termination_drops_the_future_and_cuts_the_chain():
    adv, _ = _gae(term=(0, 1, 0), done=(0, 1, 0))  # delta1 = 2 - 1 = 1
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.25, 1.0, 2.5], dtype=torch.float64))


def test_gae_truncation_bootstraps_but_cuts_the_chain():
    adv, _ = _gae(term=(0, 0, 0), done=(0, 1, 0))  # delta1 keeps gamma * V(final) = 1.75
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.4375, 1.75, 2.5], dtype=torch.float64))


def _reference_gae(r, v, nv, term, done, gamma, lam):
    """Plain Python loops, one env at a time."""
    t_len, n = len(r), len(r[0])
    adv = [[0.0] * n for _ in range(t_len)]
    for j in range(n):
        last = 0.0
        for t in reversed(range(t_len)):
            delta = r[t][j] + gamma * nv[t][j] * (1 - term[t][j]) - v[t][j]
            last = delta + gamma * lam * (1 - done[t][j]) * last
            adv[t][j] = last
    return adv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_reference_loop(seed):
    g = torch.Generator().manual_seed(seed)
    t_len, n = 37, 5
    r, v, nv = (torch.randn(t_len, n, generator=g, dtype=torch.float64) for _ in range(3))
    term = torch.rand(t_len, n, generator=g) < 0.05
    done = term | (torch.rand(t_len, n, generator=g) < 0.1)
    adv, _ = compute_gae(r, v, nv, term, done, 0.97, 0.9)
    ref = _reference_gae(r.tolist(), v.tolist(), nv.tolist(), term.int().tolist(), done.int().tolist(), 0.97, 0.9)
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float64))


def test_policy_loss_hand_computed():
    new, old = torch.log(torch.tensor([1.5, 0.5])), torch.zeros(2)
    adv = torch.tensor([1.0, -1.0])
    loss, stats = policy_loss(new, old, adv, clip=0.2)
    # sample 1: max(-1.5, -1.2) = -1.2; sample 2: max(0.5, 0.8) = 0.8; mean -0.2
    assert float(loss) == pytest.approx(-0.2)
    assert float(stats["clipfrac"]) == 1.0
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert float(stats["approx_kl"]) == pytest.approx(kl)


def test_policy_loss_inside_the_clip_is_the_plain_surrogate():
    new, old = torch.log(torch.tensor([1.1, 0.9])), torch.zeros(2)
    loss, stats = policy_loss(new, old, torch.tensor([2.0, 1.0]), clip=0.2)
    assert float(loss) == pytest.approx(-(2 * 1.1 + 0.9) / 2)
    assert float(stats["clipfrac"]) == 0.0


def test_value_loss_hand_computed():
    new, old, ret = torch.tensor([1.0, 2.0]), torch.zeros(2), torch.tensor([0.5, 3.0])
    assert float(value_loss(new, old, ret, clip=None)) == pytest.approx(0.5 * (0.25 + 1.0) / 2)
    # clipped predictions [0.5, 0.5]: errors max(0.25, 0) and max(1, 6.25)
    assert float(value_loss(new, old, ret, clip=0.5)) == pytest.approx(0.5 * (0.25 + 6.25) / 2)


def test_normalize_and_explained_variance():
    a = normalize_advantages(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(a, torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3), atol=1e-6, rtol=0)
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == 1.0
    assert explained_variance(torch.full((4,), 2.5), y) == pytest.approx(0.0)
    assert math.isnan(explained_variance(y, torch.ones(4)))


def test_schedules():
    assert lr_multiplier(0, 100, "cosine", warmup_steps=10) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, "cosine", warmup_steps=10) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, "cosine", warmup_steps=10, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(50, 100, "linear") == pytest.approx(0.5)
    assert lr_multiplier(70, 100, "constant") == 1.0
    with pytest.raises(ValueError, match="scheduler.kind"):
        lr_multiplier(0, 10, "exp")


def test_ppo_config_rejects_bad_values_naming_the_key():
    with pytest.raises(ConfigError, match="algo.num_minibatches"):
        PPOConfig(num_envs=3, rollout_steps=5, num_minibatches=4)
    with pytest.raises(ConfigError, match="algo.gamma"):
        PPOConfig(gamma=1.5)
    assert PPOConfig(num_envs=8, rollout_steps=16, num_minibatches=4).minibatch_size == 32


def test_discounted_returns_hand_computed():
    from src.rl.gae import discounted_returns

    r = torch.tensor([1.0, 0.0, 2.0])
    # G2 = 2 + .5 * 4 = 4; G1 = 0 + .5 * 4 = 2; G0 = 1 + .5 * 2 = 2
    assert torch.equal(discounted_returns(r, 0.5, bootstrap=4.0), torch.tensor([2.0, 2.0, 4.0]))
    assert torch.equal(discounted_returns(r, 1.0), torch.tensor([3.0, 2.0, 2.0]))
