"""An ensemble of actor-critics run as one batched model (``ensemble=three|five``, ``ensemble.size=N``).

The N members have their own weights (each an ordinary module, so every optimizer, Muon's
per-matrix updates included, treats each member's matrices as its own) and are evaluated together
in one call: their parameters are stacked and one ``torch.func.vmap`` of ``functional_call`` runs
them all on the same batch (attention written with plain matmuls, which vmap batches natively).

Training (``Diversity``, the ensemble's add-on, :mod:`src.rl.addons`): each training episode is acted by one
member, drawn when the episode starts (Osband et al.'s bootstrapped DQN acts the same way): a member drawn
per bar would make the behaviour policy trade between members' opinions bar after bar and pay turnover no
aggregate would. The acting member rides along in the observation (``Obs.member``); PPO's ratio, entropy and
value loss (with its clip) are that member's, so each member is trained on-policy on the episodes it acted in,
with its own critic. The diversity regulariser adds ``-diversity * D`` to the loss, with ``D`` the variance
across members of their mean positions on the same states: members are rewarded for disagreeing, so they do
not collapse into copies.

The ensemble acts (evaluation, no member given) with ``aggregate``: ``mean`` or ``median`` of the members'
mean positions, or ``uncertainty``: the mean scaled down by ``min(1, s_typ / s)``, with ``s`` the members'
std of positions on this state and ``s_typ`` its running average over training states. The diversity term
raises every state's std, so a fixed threshold would shrink towards flat by construction; relative to its
own typical level, the ensemble trades less only where its members disagree *more than usual*. Member
disagreement and each member's validation Sharpe are logged beside the ensemble's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from src.core.errors import ConfigError
from src.envs.market_env import Obs
from src.models.distributions import ScaledBeta
from src.rl.addons import AddOn, Batch, Iteration
from src.rl.value_norm import pooled_moments

AGGREGATES = ("mean", "median", "uncertainty")


@dataclass
class EnsembleConfig:
    """``conf/ensemble/*.yaml``."""

    size: int = 1
    diversity: float = 0.0
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"ensemble.size must be >= 1, got {self.size}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"ensemble.aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.diversity < 0:
            raise ConfigError(f"ensemble.diversity must be >= 0, got {self.diversity}")

    def build(self, make_member) -> tuple[nn.Module, list[AddOn]]:
        """The policy (one ``make_member()``, or ``size`` of them as an :class:`Ensemble`) and its add-ons."""
        if self.size == 1:
            return make_member(), []
        model = Ensemble([make_member() for _ in range(self.size)], self)
        return model, [Diversity(model)]


def aggregate_positions(means: torch.Tensor, how: str, typical_std: torch.Tensor | float = 0.0) -> torch.Tensor:
    """(M, B) member mean positions -> (B,) ensemble position (``typical_std``: see the module docstring)."""
    if how == "mean":
        return means.mean(dim=0)
    if how == "median":
        return means.quantile(0.5, dim=0)
    if how == "uncertainty":
        std = means.std(dim=0, unbiased=False)
        scale = (torch.as_tensor(typical_std, dtype=std.dtype) / std.clamp_min(1e-12)).clamp(max=1.0)
        return means.mean(dim=0) * scale
    raise ValueError(f"unknown aggregate {how!r}")


def disagreement(means: torch.Tensor) -> torch.Tensor:
    """(M, B) member mean positions -> (B,) variance across members: what the diversity term rewards."""
    return means.var(dim=0, unbiased=False)


class MixtureBeta:
    """The ensemble's policy (parameters (M, B)). With ``acting`` ((B,) member indices, training), sampling,
    log-probabilities and entropy are the acting member's; without, it is the uniform mixture of the members and
    acts deterministically with the aggregate."""

    def __init__(
        self,
        alpha: torch.Tensor,
        beta: torch.Tensor,
        values: torch.Tensor,
        cfg: EnsembleConfig,
        typical_std: torch.Tensor | float,
        action_range: tuple[float, float] = (-1.0, 1.0),
        acting: torch.Tensor | None = None,
    ):
        self.members = ScaledBeta(alpha, beta, *action_range)
        self.member_values = values  # (M, B): each member's critic
        self.cfg, self.typical_std, self.acting = cfg, typical_std, acting
        self.m = alpha.shape[0]
        if acting is not None:
            pick = lambda x: x.gather(0, acting[None]).squeeze(0)  # noqa: E731
            self.own = ScaledBeta(pick(alpha), pick(beta), *action_range)

    def sample(self) -> torch.Tensor:
        if self.acting is not None:
            return self.own.sample()
        draws = self.members.sample()  # (M, B)
        k = torch.randint(0, self.m, (draws.shape[1],), device=draws.device)
        return draws.gather(0, k[None]).squeeze(0)

    def member_log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.members.log_prob(action[None].expand(self.m, -1))  # (M, B)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        if self.acting is not None:
            return self.own.log_prob(action)
        return torch.logsumexp(self.member_log_prob(action), dim=0) - math.log(self.m)

    def entropy(self) -> torch.Tensor:
        """The acting member's entropy (training); without one, the members' mean (a lower bound on the mixture's)."""
        return self.own.entropy() if self.acting is not None else self.members.entropy().mean(dim=0)

    def regularizer(self) -> tuple[torch.Tensor, dict]:
        """``-diversity x`` the members' disagreement on these states (see the module docstring)."""
        d = self.disagreement().mean()
        return -self.cfg.diversity * d, {"ensemble/disagreement": d}

    @property
    def member_means(self) -> torch.Tensor:
        return self.members.mean  # (M, B)

    @property
    def mean(self) -> torch.Tensor:
        """The ensemble's deterministic position (the configured aggregate)."""
        return aggregate_positions(self.member_means, self.cfg.aggregate, self.typical_std)

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
        self.register_buffer("typical_std", torch.zeros(()))  # running std of member positions on training states
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
        """The policy and the value: the acting member's where ``obs.member`` is given, else the members' mean."""
        ab, v = self.member_heads(obs)
        dist = MixtureBeta(ab[..., 0], ab[..., 1], v, self.cfg, self.typical_std, self.action_range, obs.member)
        value = v.mean(dim=0) if obs.member is None else v.gather(0, obs.member[None]).squeeze(0)
        return dist, value

    def value(self, obs: Obs) -> torch.Tensor:
        return self(obs)[1]

    def act(self, obs: Obs, deterministic: bool = False) -> torch.Tensor:
        dist, _ = self(obs)
        return dist.mean if deterministic else dist.sample()


class MemberTracker:
    """The member acting in each of N training episodes, drawn uniformly when an episode starts."""

    kind = "members"

    def __init__(self, n: int, size: int, device, generator: torch.Generator) -> None:
        self.size, self.gen = size, generator
        self.member = torch.randint(0, size, (n,), device=device, generator=generator)

    def attach(self, obs: Obs) -> Obs:
        return Obs(obs.market, obs.position, obs.goal, self.member)

    def step(self, reward: torch.Tensor, dones: torch.Tensor) -> None:
        fresh = torch.randint(0, self.size, self.member.shape, device=self.member.device, generator=self.gen)
        self.member = torch.where(dones, fresh, self.member)

    def state_dict(self) -> dict:
        return {"member": self.member.cpu(), "generator": self.gen.get_state()}

    def load_state_dict(self, s: dict) -> None:
        self.member.copy_(s["member"])
        self.gen.set_state(s["generator"])


class Diversity(AddOn):
    """The ensemble's add-on: one acting member per training episode (:class:`MemberTracker`) and the running
    typical disagreement the ``uncertainty`` aggregate is relative to (the diversity term itself is the
    policy's regulariser, :meth:`MixtureBeta.regularizer`)."""

    SAMPLE = 1024  # rollout states the typical disagreement is measured on, per iteration
    MOMENTUM = 0.9

    def __init__(self, model: Ensemble) -> None:
        self.model = model
        self.members: MemberTracker | None = None

    def setup(self, module) -> None:
        gen = torch.Generator(device=module.device)
        gen.manual_seed(int(module.cfg.seed) * 1000 + 700 + module.global_rank)
        self.members = MemberTracker(module.ppo.num_envs, self.model.cfg.size, module.device, gen)

    def tracker(self) -> MemberTracker:
        return self.members

    @torch.no_grad()
    def observe(self, it: Iteration, rule, batch: Batch, rewards: torch.Tensor) -> None:
        idx = torch.arange(0, batch.size, max(1, batch.size // self.SAMPLE), device=batch.actions.device)
        o = batch.take(idx).obs
        std = self.model(Obs(o.market, o.position, o.goal))[0].member_means.std(dim=0, unbiased=False)
        std = pooled_moments(std)[0].float()  # the same typical level on every DDP rank
        t = self.model.typical_std
        t.copy_(torch.where(t > 0, self.MOMENTUM * t + (1 - self.MOMENTUM) * std, std))
        it.logs["ensemble/typical_std"] = t.clone()

    def extra_state(self) -> dict:
        return {"members": self.members.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "members" in state:
            self.members.load_state_dict(state["members"])
