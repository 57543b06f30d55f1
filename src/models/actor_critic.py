"""Actor-critic models: an encoder of the observation window, then policy and value heads.

Built bottom-up in the nanoGPT manner: ``Block`` -> ``TransformerEncoder`` ->
``ActorCritic``. Encoders map an :class:`~src.envs.Obs` to a summary vector;
the heads are shared by every encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.core.errors import ConfigError
from src.envs.market_env import Obs
from src.models.distributions import ScaledBeta


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model), nn.Dropout(dropout))

    vmap_attention = False  # an ensemble's template sets it: attention in plain matmuls, which vmap batches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + (self._attention(h) if self.vmap_attention else self.attn(h, h, h, need_weights=False)[0])
        return x + self.mlp(self.ln2(x))

    def _attention(self, h: torch.Tensor) -> torch.Tensor:
        """What ``self.attn`` computes, with its own weights, written out (no fused kernel)."""
        a = self.attn
        b, w, d = h.shape
        nh = a.num_heads
        q, k, v = (
            x.reshape(b, w, nh, d // nh).transpose(1, 2)
            for x in F.linear(h, a.in_proj_weight, a.in_proj_bias).chunk(3, -1)
        )
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // nh), dim=-1)
        att = F.dropout(att, a.dropout, self.training)
        return a.out_proj((att @ v).transpose(1, 2).reshape(b, w, d))


class TransformerEncoder(nn.Module):
    """Input projection + learned positions + pre-norm blocks; summary = last (most recent) token.

    Attention is bidirectional *within* the window: every row of the window is
    already in the past of the decision bar, so no causal mask is needed.
    """

    def __init__(
        self,
        num_features: int,
        window: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 128,
        dropout: float = 0.0,
        pool: str = "last",
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"model.d_model ({d_model}) must be divisible by model.n_heads ({n_heads})")
        if pool not in ("last", "mean"):
            raise ConfigError(f"model.pool must be 'last' or 'mean', got {pool!r}")
        self.pool = pool
        self.inp = nn.Linear(num_features, d_model)
        self.pos = nn.Parameter(torch.randn(1, window, d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.out_dim = d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.pos  # (B, W, F) -> (B, W, D)
        for block in self.blocks:
            h = block(h)
        h = self.ln_f(h)
        return h[:, -1] if self.pool == "last" else h.mean(dim=1)  # (B, D)


class MLPEncoder(nn.Module):
    """Flattened window through a tanh MLP (the Stable-Baselines3 default shape)."""

    def __init__(self, num_features: int, window: int, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        layers, d = [], num_features * window
        for h in hidden:
            layers += [nn.Linear(d, h), nn.Tanh()]
            d = h
        self.net = nn.Sequential(nn.Flatten(), *layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ActorCritic(nn.Module):
    """Encoder summary + current weight (+ goal features) -> Beta policy over ``action_range`` and a value.

    ``goal_dim`` > 0 makes the policy and critic goal-conditioned (``replay=her``): the heads
    also read ``obs.goal``, which must then be present.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head_hidden: int = 64,
        goal_dim: int = 0,
        action_range: tuple[float, float] | list[float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.goal_dim = goal_dim
        self.action_range = (float(action_range[0]), float(action_range[1]))  # the env's position limits
        d = encoder.out_dim + 1 + goal_dim  # + the current position (+ the goal)
        self.actor = nn.Sequential(nn.Linear(d, head_hidden), nn.Tanh(), nn.Linear(head_hidden, 2))
        self.critic = nn.Sequential(nn.Linear(d, head_hidden), nn.Tanh(), nn.Linear(head_hidden, 1))
        for head, gain in ((self.actor, 0.01), (self.critic, 1.0)):  # CleanRL-style small policy output
            nn.init.orthogonal_(head[-1].weight, gain)
            nn.init.zeros_(head[-1].bias)

    def _summary(self, market: torch.Tensor, position: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        parts = [self.encoder(market), position]
        if self.goal_dim:
            if goal is None:
                raise ValueError("this policy is goal-conditioned (replay=her) but the observation has no goal")
            parts.append(goal)
        return torch.cat(parts, dim=-1)

    def heads(
        self, market: torch.Tensor, position: torch.Tensor, goal: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2) Beta concentrations and (B,) values from plain tensors (an ensemble vmaps this)."""
        z = self._summary(market, position, goal)
        ab = 1.0 + F.softplus(self.actor(z).float() + math.log(math.e - 1))  # alpha = beta = 2 at init
        return ab, self.critic(z).squeeze(-1).float()

    def forward(self, obs: Obs) -> tuple[ScaledBeta, torch.Tensor]:
        ab, v = self.heads(obs.market, obs.position, obs.goal)
        return ScaledBeta(ab[:, 0], ab[:, 1], *self.action_range), v

    def value(self, obs: Obs) -> torch.Tensor:
        return self.critic(self._summary(obs.market, obs.position, obs.goal)).squeeze(-1).float()

    def act(self, obs: Obs, deterministic: bool = False) -> torch.Tensor:
        dist, _ = self(obs)
        return dist.mean if deterministic else dist.sample()


def transformer_actor_critic(
    num_features: int,
    window: int,
    head_hidden: int = 64,
    goal_dim: int = 0,
    action_range: tuple[float, float] | list[float] = (-1.0, 1.0),
    **kwargs,
) -> ActorCritic:
    """Factory used by ``conf/model/transformer.yaml``."""
    return ActorCritic(TransformerEncoder(num_features, window, **kwargs), head_hidden, goal_dim, action_range)


def mlp_actor_critic(
    num_features: int,
    window: int,
    hidden: list[int] | tuple[int, ...] = (64, 64),
    head_hidden: int = 64,
    goal_dim: int = 0,
    action_range: tuple[float, float] | list[float] = (-1.0, 1.0),
) -> ActorCritic:
    """Factory used by ``conf/model/mlp.yaml``."""
    return ActorCritic(MLPEncoder(num_features, window, tuple(hidden)), head_hidden, goal_dim, action_range)
