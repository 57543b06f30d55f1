"""The portfolio policy: a Dirichlet over the simplex of assets and cash, from a transformer over time and assets.

Design. Each asset's window goes through one temporal transformer (:class:`TransformerEncoder`, the weights
shared by every asset), giving one token per asset; its current weight is added to it, and a learned cash token
(plus the cash weight) joins them. Then ``cross_layers`` transformer blocks attend *across* the K + 1 tokens
with no positional encoding, so the policy is permutation-equivariant: it has no asset identity, cannot memorise
one ticker's past returns, and must read each asset from its own window (and the temporal encoder trains on K
windows per observation). The actor maps each token to its Dirichlet concentration(s): long-only, one per asset
and one for cash; long/short, a long and a short leg per asset and one for cash (the env's ``to_weights``). The
critic reads the mean of the tokens.

Why a Dirichlet (Andre & Coqueret, 2020, "Dirichlet policies for reinforced factor portfolios"): the action is on
the simplex by construction, its log-probability and entropy are exact (PPO's ratio and bonus need both), and the
mean, used for deterministic evaluation, is ``alpha / sum(alpha)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Dirichlet

from src.core.errors import ConfigError
from src.envs.market_env import Obs
from src.models.actor_critic import Block, TransformerEncoder

X_EPS = 1e-6  # samples are kept off the faces of the simplex, where the density is 0 or infinite


class SimplexDirichlet:
    """A Dirichlet with concentrations ``alpha`` (B, A), the interface of :class:`ScaledBeta`."""

    def __init__(self, alpha: torch.Tensor) -> None:
        self.alpha = alpha
        self._d = Dirichlet(alpha, validate_args=False)

    def sample(self) -> torch.Tensor:
        x = self._d.sample().clamp_min(X_EPS)
        return x / x.sum(-1, keepdim=True)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        x = action.clamp_min(X_EPS)
        return self._d.log_prob(x / x.sum(-1, keepdim=True))

    def entropy(self) -> torch.Tensor:
        return self._d.entropy()

    def regularizer(self) -> tuple[float, dict]:
        return 0.0, {}

    @property
    def mean(self) -> torch.Tensor:
        return self.alpha / self.alpha.sum(-1, keepdim=True)


class PortfolioActorCritic(nn.Module):
    """Temporal encoder per asset, attention across assets and cash, a Dirichlet actor and a critic."""

    def __init__(self, num_assets: int, num_features: int, window: int, mode: str = "long_only",
                 d_model: int = 64, n_heads: int = 4, n_layers: int = 2, d_ff: int = 128, cross_layers: int = 1,
                 head_hidden: int = 64, dropout: float = 0.0, pool: str = "last") -> None:  # fmt: skip
        super().__init__()
        if mode not in ("long_only", "long_short"):
            raise ConfigError(f"env.mode must be long_only or long_short, got {mode!r}")
        self.k, self.legs = num_assets, 1 if mode == "long_only" else 2
        self.encoder = TransformerEncoder(num_features, window, d_model, n_heads, n_layers, d_ff, dropout, pool)
        self.weight_in = nn.Linear(1, d_model)
        self.cash = nn.Parameter(torch.randn(d_model) * 0.02)
        self.cross = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout) for _ in range(cross_layers))
        self.ln = nn.LayerNorm(d_model)
        self.actor = nn.Sequential(nn.Linear(d_model, head_hidden), nn.Tanh(), nn.Linear(head_hidden, self.legs))
        self.cash_actor = nn.Sequential(nn.Linear(d_model, head_hidden), nn.Tanh(), nn.Linear(head_hidden, 1))
        self.critic = nn.Sequential(nn.Linear(d_model, head_hidden), nn.Tanh(), nn.Linear(head_hidden, 1))
        for head, gain in ((self.actor, 0.01), (self.cash_actor, 0.01), (self.critic, 1.0)):
            nn.init.orthogonal_(head[-1].weight, gain)
            nn.init.zeros_(head[-1].bias)

    def _tokens(self, obs: Obs) -> torch.Tensor:
        b, k, w, f = obs.market.shape
        if k != self.k:
            raise ValueError(f"the policy was built for {self.k} assets, the observation has {k}")
        h = self.encoder(obs.market.reshape(b * k, w, f)).reshape(b, k, -1)
        weights = obs.position.reshape(b, k, 1)
        h = h + self.weight_in(weights)
        cash = self.cash + self.weight_in(1 - weights.sum(1))  # (b, d)
        x = torch.cat([h, cash[:, None]], dim=1)  # (b, k + 1, d): no positions, so no asset identity
        for block in self.cross:
            x = block(x)
        return self.ln(x)

    def forward(self, obs: Obs) -> tuple[SimplexDirichlet, torch.Tensor]:
        x = self._tokens(obs)
        legs = self.actor(x[:, : self.k]).float()  # (b, k, legs)
        logits = torch.cat([legs.transpose(1, 2).reshape(len(x), -1), self.cash_actor(x[:, -1]).float()], -1)
        alpha = 1.0 + F.softplus(logits + math.log(math.e - 1))  # every concentration 2 at init
        return SimplexDirichlet(alpha), self.critic(x.mean(1)).squeeze(-1).float()

    def value(self, obs: Obs) -> torch.Tensor:
        return self.critic(self._tokens(obs).mean(1)).squeeze(-1).float()

    def act(self, obs: Obs, deterministic: bool = False) -> torch.Tensor:
        dist, _ = self(obs)
        return dist.mean if deterministic else dist.sample()
