"""An ensemble of actor-critics run as one batched model (``ensemble=three|five``, ``ensemble.size=N``).

The N members have their own weights (each an ordinary module, so every optimizer, Muon's
per-matrix updates included, treats each member's matrices as its own) and are evaluated together
in one call: their parameters are stacked and one ``torch.func.vmap`` of ``functional_call`` runs
them all on the same batch (attention written with plain matmuls, which vmap batches natively).

Training treats the ensemble as the *mixture* policy ``pi(a|s) = 1/N sum_i pi_i(a|s)``: the rollout
samples a member per env and step, then its action; PPO's ratio is the mixture's, so the data are
on-policy for exactly the policy being optimised and each member's gradient is weighted by its
responsibility for the action. Each member keeps its own critic, trained on the same returns
(the mixture's value is their mean). Entropy is the members' mean entropy (a lower bound on the
mixture's). The diversity regulariser adds ``-diversity * D`` to the loss, with ``D`` the variance
across members of their mean positions on the same states: members are rewarded for disagreeing,
so they do not collapse into copies.

The ensemble acts (evaluation) with ``aggregate``: ``mean`` or ``median`` of the members' mean
positions, or ``uncertainty``: the mean shrunk by ``max(0, 1 - std / shrink_at)``, flat when the
members disagree by ``shrink_at`` or more. Member disagreement and each member's validation Sharpe
are logged beside the ensemble's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from src.envs.market_env import Obs
from src.errors import ConfigError
from src.models.distributions import ScaledBeta

AGGREGATES = ("mean", "median", "uncertainty")


@dataclass
class EnsembleConfig:
    """``conf/ensemble/*.yaml``."""

    size: int = 1
    diversity: float = 0.0
    aggregate: str = "mean"
    shrink_at: float = 0.5

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"ensemble.size must be >= 1, got {self.size}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"ensemble.aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.diversity < 0 or self.shrink_at <= 0:
            raise ConfigError(
                f"ensemble.diversity must be >= 0 and ensemble.shrink_at > 0, got {self.diversity}, {self.shrink_at}"
            )


def aggregate_positions(means: torch.Tensor, how: str, shrink_at: float = 0.5) -> torch.Tensor:
    """(M, B) member mean positions -> (B,) ensemble position."""
    if how == "mean":
        return means.mean(dim=0)
    if how == "median":
        return means.quantile(0.5, dim=0)
    if how == "uncertainty":
        std = means.std(dim=0, unbiased=False)
        return means.mean(dim=0) * (1 - std / shrink_at).clamp(0.0, 1.0)
    raise ValueError(f"unknown aggregate {how!r}")


def disagreement(means: torch.Tensor) -> torch.Tensor:
    """(M, B) member mean positions -> (B,) variance across members: what the diversity term rewards."""
    return means.var(dim=0, unbiased=False)


class MixtureBeta:
    """The ensemble's policy: a uniform mixture of the members' :class:`ScaledBeta` (parameters (M, B))."""

    def __init__(
        self,
        alpha: torch.Tensor,
        beta: torch.Tensor,
        values: torch.Tensor,
        how: str,
        shrink_at: float,
        action_range: tuple[float, float] = (-1.0, 1.0),
    ):
        self.members = ScaledBeta(alpha, beta, *action_range)
        self.member_values = values  # (M, B): each member's critic
        self.how, self.shrink_at = how, shrink_at
        self.m = alpha.shape[0]

    def sample(self) -> torch.Tensor:
        draws = self.members.sample()  # (M, B)
        k = torch.randint(0, self.m, (draws.shape[1],), device=draws.device)
        return draws.gather(0, k[None]).squeeze(0)

    def member_log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.members.log_prob(action[None].expand(self.m, -1))  # (M, B)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.member_log_prob(action), dim=0) - math.log(self.m)

    def entropy(self) -> torch.Tensor:
        return self.members.entropy().mean(dim=0)

    @property
    def member_means(self) -> torch.Tensor:
        return self.members.mean  # (M, B)

    @property
    def mean(self) -> torch.Tensor:
        """The ensemble's deterministic position (the configured aggregate)."""
        return aggregate_positions(self.member_means, self.how, self.shrink_at)

    def disagreement(self) -> torch.Tensor:
        return disagreement(self.member_means)


class _Heads(nn.Module):
    """Calls an actor-critic's tensor-level heads (what functional_call runs under vmap)."""

    def __init__(self, ac: nn.Module) -> None:
        super().__init__()
        self.ac = ac

    def forward(self, market, position, goal):
        return self.ac.heads(market, position, goal)


class Ensemble(nn.Module):
    """See the module docstring. ``members`` must share one architecture."""

    def __init__(self, members: list[nn.Module], cfg: EnsembleConfig) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError("an ensemble needs at least 2 members (ensemble.size=1 is the plain model)")
        self.members = nn.ModuleList(members)
        self.cfg = cfg
        self.goal_dim = members[0].goal_dim
        self.action_range = members[0].action_range
        self._names = [n for n, _ in members[0].named_parameters()]
        template = copy.deepcopy(members[0]).to("meta")
        for block in getattr(template.encoder, "blocks", []):
            block.vmap_attention = True  # plain-matmul attention: batched natively by vmap
        object.__setattr__(self, "_heads", _Heads(template))  # not a submodule: holds no weights

    def muon_matrices(self) -> list[nn.Parameter]:
        """Each member's hidden matrices (what Muon orthogonalises), see :func:`src.optim.muon.hidden_matrices`."""
        from src.optim.muon import hidden_matrices

        return [p for m in self.members for p in hidden_matrices(m)[0]]

    def _stacked(self) -> dict[str, torch.Tensor]:
        per = [dict(m.named_parameters()) for m in self.members]
        return {f"ac.{n}": torch.stack([p[n] for p in per]) for n in self._names}

    def member_heads(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, B, 2) Beta concentrations and (M, B) values of every member, in one batched call."""
        self._heads.train(self.training)
        fn = lambda params: functional_call(self._heads, params, (obs.market, obs.position, obs.goal))  # noqa: E731
        return vmap(fn, randomness="different")(self._stacked())

    def forward(self, obs: Obs) -> tuple[MixtureBeta, torch.Tensor]:
        ab, v = self.member_heads(obs)
        dist = MixtureBeta(ab[..., 0], ab[..., 1], v, self.cfg.aggregate, self.cfg.shrink_at, self.action_range)
        return dist, v.mean(dim=0)

    def value(self, obs: Obs) -> torch.Tensor:
        return self.member_heads(obs)[1].mean(dim=0)

    def act(self, obs: Obs, deterministic: bool = False) -> torch.Tensor:
        dist, _ = self(obs)
        return dist.mean if deterministic else dist.sample()
