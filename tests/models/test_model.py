"""The policy distribution's exact log-probabilities, and the models' shapes and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from src.core.errors import ConfigError
from src.envs.market_env import Obs
from src.models import mlp_actor_critic, transformer_actor_critic
from src.models.distributions import ScaledBeta


def test_scaled_beta_log_prob_and_entropy_match_scipy():
    d = ScaledBeta(torch.tensor([2.0, 3.5]), torch.tensor([5.0, 1.5]))
    a = torch.tensor([-0.3, 0.6])
    x = (a.numpy() + 1) / 2
    ref = stats.beta.logpdf(x, [2.0, 3.5], [5.0, 1.5]) - math.log(2)
    torch.testing.assert_close(d.log_prob(a), torch.tensor(ref, dtype=torch.float32))
    ref_h = stats.beta.entropy([2.0, 3.5], [5.0, 1.5]) + math.log(2)
    torch.testing.assert_close(d.entropy(), torch.tensor(ref_h, dtype=torch.float32))
    torch.testing.assert_close(d.mean, torch.tensor([2 * 2 / 7 - 1, 2 * 3.5 / 5 - 1]))


def test_samples_stay_inside_the_bounds():
    d = ScaledBeta(torch.full((10000,), 1.01), torch.full((10000,), 1.01))
    s = d.sample()
    assert s.min() > -1 and s.max() < 1 and torch.isfinite(d.log_prob(s)).all()


@pytest.mark.parametrize("factory", [transformer_actor_critic, mlp_actor_critic])
def test_actor_critic_shapes_and_gradients(factory):
    kw = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32} if factory is transformer_actor_critic else {}
    model = factory(num_features=10, window=12, **kw)
    obs = Obs(torch.randn(7, 12, 10), torch.rand(7, 1) * 2 - 1)
    dist, v = model(obs)
    assert v.shape == (7,) and dist.mean.shape == (7,)
    assert torch.allclose(dist.mean, torch.zeros(7), atol=0.05)  # starts near flat (alpha = beta ~ 2)
    loss = -dist.log_prob(dist.sample()).mean() + v.pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_transformer_summary_depends_only_on_its_window():
    model = transformer_actor_critic(num_features=4, window=6, d_model=16, n_heads=2, n_layers=2, d_ff=32).eval()
    x = torch.randn(1, 6, 4)
    pos = torch.zeros(1, 1)
    v1 = model.value(Obs(x, pos))
    x2 = x.clone()
    x2[0, 0] += 1.0  # the oldest bar of the window does matter...
    assert not torch.allclose(model.value(Obs(x2, pos)), v1)
    with pytest.raises(ConfigError, match="divisible"):
        transformer_actor_critic(num_features=4, window=6, d_model=10, n_heads=3)
