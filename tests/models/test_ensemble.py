"""Ensembles: one batched model equal to a loop over members, the mixture policy, the aggregates,
the diversity regulariser's direction and effect (end to end: tests/training/test_augment_curriculum.py)."""

from __future__ import annotations

import pytest
import torch

from src.envs.market_env import Obs
from src.models import mlp_actor_critic, transformer_actor_critic
from src.models.ensemble import Ensemble, EnsembleConfig, aggregate_positions, disagreement
from src.optim.muon import hidden_matrices


def _obs(b: int = 32, w: int = 12, f: int = 10, seed: int = 0) -> Obs:
    g = torch.Generator().manual_seed(seed)
    return Obs(torch.randn(b, w, f, generator=g), torch.rand(b, 1, generator=g) * 2 - 1)


def _members(factory, n: int = 3, **kw):
    torch.manual_seed(0)
    return [factory(10, 12, **kw) for _ in range(n)]


@pytest.mark.parametrize("factory", [transformer_actor_critic, mlp_actor_critic], ids=["transformer", "mlp"])
@pytest.mark.parametrize("train", [False, True])
def test_the_batched_ensemble_equals_a_loop_over_its_members(factory, train):
    kw = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32} if factory is transformer_actor_critic else {}
    members = _members(factory, **kw)
    ens = Ensemble(members, EnsembleConfig(size=3)).train(train)
    obs = _obs()
    ab, v = ens.member_heads(obs)
    for i, m in enumerate(members):
        m.train(train)
        want_ab, want_v = m.heads(obs.market, obs.position)
        torch.testing.assert_close(ab[i], want_ab, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v[i], want_v, rtol=1e-5, atol=1e-6)
    # gradients reach every member's own weights through the batched call
    v.sum().backward()
    assert all(m.encoder.parameters().__next__().grad is not None for m in members)


def test_the_mixture_policy_and_the_aggregates():
    ens = Ensemble(_members(mlp_actor_critic), EnsembleConfig(size=3))
    obs = _obs(8)
    dist, value = ens(obs)
    a = torch.linspace(-0.9, 0.9, 8)
    per = dist.member_log_prob(a)  # (3, 8)
    torch.testing.assert_close(dist.log_prob(a), (per.exp().mean(0)).log())
    torch.testing.assert_close(value, dist.member_values.mean(0))
    assert dist.sample().shape == (8,) and ((dist.sample().abs()) <= 1).all()
    means = torch.tensor([[0.2, 0.6], [0.4, 0.2], [0.9, 1.0]])
    torch.testing.assert_close(aggregate_positions(means, "mean"), torch.tensor([0.5, 0.6]))
    torch.testing.assert_close(aggregate_positions(means, "median"), torch.tensor([0.4, 0.6]))
    # std across members: [0.2944, 0.3266]; typical 0.3: the first state trades in full, the second x 0.3 / 0.3266
    want = torch.tensor([0.5, 0.6 * 0.3 / 0.326599])
    torch.testing.assert_close(aggregate_positions(means, "uncertainty", 0.3), want, rtol=1e-4, atol=1e-6)
    # disagreement raised everywhere (what the diversity term does) raises the typical level too: the same positions
    # (a fixed threshold would shrink the wider ensemble towards flat by construction, issue 19)
    wide = means.mean(0) + 2 * (means - means.mean(0))
    torch.testing.assert_close(
        aggregate_positions(wide, "uncertainty", 0.6), aggregate_positions(means, "uncertainty", 0.3)
    )
    # with an acting member (training) the policy is that member's own Beta
    acting = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    dist, value = ens(Obs(obs.market, obs.position, member=acting))
    own = per.gather(0, acting[None]).squeeze(0)
    torch.testing.assert_close(dist.log_prob(a), own)
    torch.testing.assert_close(value, dist.member_values.gather(0, acting[None]).squeeze(0))


def test_the_diversity_gradient_pushes_each_member_away_from_the_others():
    means = torch.tensor([[0.1, 0.5], [0.3, -0.2], [-0.4, 0.0]], requires_grad=True)
    (-disagreement(means).sum()).backward()  # the loss term for diversity 1
    centred = means.detach() - means.detach().mean(0)
    torch.testing.assert_close(means.grad, -2 * centred / 3)
    # a gradient step on the loss moves every member further from the ensemble mean
    assert (means.grad * centred <= 0).all()


def _imitate(diversity: float, steps: int = 60) -> tuple[float, Ensemble]:
    """All members imitate one target action; with diversity > 0 they are also rewarded for disagreeing."""
    ens = Ensemble(_members(mlp_actor_critic), EnsembleConfig(size=3, diversity=diversity))
    opt = torch.optim.Adam(ens.parameters(), lr=3e-3)
    obs = _obs(64)
    target = torch.full((64,), 0.3)
    for _ in range(steps):
        dist, _ = ens(obs)
        loss = -dist.members.log_prob(target.expand(3, -1)).mean() - diversity * dist.disagreement().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(ens(obs)[0].disagreement().mean()), ens


def test_diversity_keeps_members_apart_where_plain_training_collapses_them():
    d0, _ = _imitate(0.0)
    d1, ens = _imitate(5.0)
    assert d1 > 10 * d0
    flat = [torch.cat([p.flatten() for p in m.parameters()]) for m in ens.members]
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(3) for j in range(i + 1, 3))


def test_muon_sees_each_members_own_hidden_matrices():
    members = _members(transformer_actor_critic, d_model=16, n_heads=2, n_layers=2, d_ff=32)
    ens = Ensemble(members, EnsembleConfig(size=3))
    muon, rest = hidden_matrices(ens)
    assert len(muon) == 3 * len(hidden_matrices(members[0])[0])
    assert all(p.ndim == 2 for p in muon) and len(muon) + len(rest) == len(list(ens.parameters()))
