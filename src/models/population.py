"""A population of K independent agents trained in one process as one batched model (``population=K``).

Member k is the run ``population=1 seed=<seed + k>``, computed alongside the others:

- **weights**: every parameter of the K actor-critics is one stacked (K, ...) tensor; one ``torch.func.vmap`` of
  ``functional_call`` runs all members, each on its own rows of the batch (rows ``k*n .. (k+1)*n``). Members are
  initialised exactly as their own runs would be (``torch.manual_seed(seed + k)``, then the model's constructor).
- **randomness**: each member owns a copy of the process-global torch generator
  (:class:`~src.rl.population.MemberStreams`): its actions are sampled, and its minibatches permuted, from the
  stream its own run would have drawn from, and its training env draws episode starts from its own generator
  (:class:`~src.envs.population.PopulationEnv`).
- **updates** (:mod:`src.rl.population`, driven by :mod:`src.training.population`): each member's loss is
  computed on its own minibatch only (``vmap`` over members), so a gradient never crosses members; gradient norms
  are clipped per member; elementwise optimizers (AdamW, SGD) step the stacked tensors (which is K independent
  optimizers, element by element), Muon orthogonalises each member's matrix with a batched Newton-Schulz
  (:mod:`src.optim.batched_muon`).
- **selection**: each member keeps the weights of its own best validation Sharpe (:meth:`Population.keep_best`).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, vmap

from src.envs.market_env import Obs
from src.models.distributions import ScaledBeta
from src.rl.population import MemberStreams


class PopulationBeta(ScaledBeta):
    """The members' policies on their own rows: (K, n) concentrations, flattened member-major to (K * n,).

    ``sample`` draws member k's rows from member k's stream, with the shapes its own run draws (so a member
    samples the very actions it would alone); every other method is elementwise and runs on all rows at once.
    """

    def __init__(self, alpha: torch.Tensor, beta: torch.Tensor, low: float, high: float, streams: MemberStreams):
        super().__init__(alpha.reshape(-1), beta.reshape(-1), low, high)
        self.by_member, self.streams, self.range = (alpha, beta), streams, (low, high)

    def sample(self) -> torch.Tensor:
        alpha, beta = self.by_member
        parts = []
        for k in range(alpha.shape[0]):
            with self.streams.member(k):
                parts.append(ScaledBeta(alpha[k], beta[k], *self.range).sample())
        return torch.cat(parts)


class _Heads(nn.Module):
    """An actor-critic's tensor-level heads, what ``functional_call`` runs under ``vmap``."""

    def __init__(self, ac: nn.Module) -> None:
        super().__init__()
        self.ac = ac

    def forward(self, market, position):
        return self.ac.heads(market, position)


def _key(name: str) -> str:
    return name.replace(".", "__")


class Population(nn.Module):
    """K actor-critics of one architecture as stacked weights (see the module docstring)."""

    def __init__(self, members: list[nn.Module], streams: MemberStreams) -> None:
        super().__init__()
        first = members[0]
        if any(True for _ in first.buffers()):
            raise ValueError("a population stacks parameters only; this model has buffers")
        self.size, self.streams = len(members), streams
        self.action_range, self.goal_dim = first.action_range, first.goal_dim
        self.names = [n for n, _ in first.named_parameters()]
        per = [dict(m.named_parameters()) for m in members]
        self.stacked = nn.ParameterDict()
        for n in self.names:
            p = nn.Parameter(torch.stack([d[n].detach() for d in per]))
            p.member_ndim = per[0][n].ndim  # what the optimizer factories decide by (weight decay on matrices)
            self.stacked[_key(n)] = p
        from src.optim.muon import hidden_matrices

        hidden = {id(p) for p in hidden_matrices(first)[0]}
        self._hidden = [n for n, p in first.named_parameters() if id(p) in hidden]
        template = copy.deepcopy(first).to("meta")  # structure only: the weights come from the stack
        for block in getattr(template.encoder, "blocks", []):
            block.vmap_attention = True  # plain-matmul attention: batched natively by vmap
        object.__setattr__(self, "template", template)  # not submodules: they hold no weights
        object.__setattr__(self, "_heads", _Heads(template))
        for n in self.names:
            self.register_buffer("best__" + _key(n), self.stacked[_key(n)].detach().clone())
        self.register_buffer("best_val", torch.full((self.size,), float("-inf"), dtype=torch.float64))
        self.register_buffer("best_step", torch.full((self.size,), -1, dtype=torch.long))

    # ---- weights ----
    def params(self) -> dict[str, torch.Tensor]:
        """Stacked (K, ...) parameters by the member model's parameter names."""
        return {n: self.stacked[_key(n)] for n in self.names}

    def member_state(self, k: int, best: bool = False) -> dict[str, torch.Tensor]:
        """Member k's weights as its own model's state dict (``best``: its selected weights)."""
        src = (lambda n: getattr(self, "best__" + _key(n))) if best else (lambda n: self.stacked[_key(n)])
        return {n: src(n)[k].detach().clone() for n in self.names}

    def muon_matrices(self) -> list[nn.Parameter]:
        """The stacked hidden matrices (each member's orthogonalised on its own: :mod:`src.optim.batched_muon`)."""
        return [self.stacked[_key(n)] for n in self._hidden]

    @torch.no_grad()
    def keep_best(self, sharpes: torch.Tensor, step: int) -> torch.Tensor:
        """Copy the weights of every member whose validation Sharpe beat its best so far; return that mask."""
        # as Lightning's ModelCheckpoint (mode max) on the logged float32 value: NaN counts as -inf, the first
        # validation always selects, a later one only when strictly better
        s = sharpes.float().nan_to_num(nan=float("-inf")).to(self.best_val)
        better = (s > self.best_val) | (self.best_step < 0)
        for n in self.names:
            best = getattr(self, "best__" + _key(n))
            best.copy_(torch.where(better.view(-1, *[1] * (best.ndim - 1)), self.stacked[_key(n)], best))
        self.best_val.copy_(torch.where(better, s, self.best_val))
        self.best_step.masked_fill_(better, int(step))
        return better

    @contextmanager
    def selected(self):
        """Run with every member's selected weights in place of the current ones."""
        keep = {n: p.detach().clone() for n, p in self.params().items()}
        with torch.no_grad():
            for n, p in self.params().items():
                p.copy_(getattr(self, "best__" + _key(n)))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params().items():
                    p.copy_(keep[n])

    # ---- forward ----
    def member_heads(
        self, market: torch.Tensor, position: torch.Tensor, params: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (K * n, ...) member-major -> (K, n, 2) Beta concentrations and (K, n) values."""
        k = self.size
        m, pos = market.reshape(k, -1, *market.shape[1:]), position.reshape(k, -1, *position.shape[1:])
        fn = lambda p, x, y: functional_call(self._heads, {f"ac.{n}": v for n, v in p.items()}, (x, y))  # noqa: E731
        return vmap(fn)(self.params() if params is None else params, m, pos)

    def forward(self, obs: Obs) -> tuple[PopulationBeta, torch.Tensor]:
        """Rows in member-major order, member k's on rows k*n .. (k+1)*n (the training env's, evaluation's)."""
        if obs.goal is not None or obs.member is not None:
            raise ValueError("a population's members are plain actor-critics (no goals, no ensemble members)")
        ab, v = self.member_heads(obs.market, obs.position)
        return PopulationBeta(ab[..., 0], ab[..., 1], *self.action_range, self.streams), v.reshape(-1)

    def value(self, obs: Obs) -> torch.Tensor:
        """Values of member-major rows, or, with ``obs.member`` (per-row member ids), of any rows: grouped by
        member and padded to one batched call (the final states of episodes cut at different steps)."""
        if obs.member is None:
            return self(obs)[1]
        member, k = obs.member, self.size
        counts = torch.bincount(member, minlength=k)
        width = max(int(counts.max()), 1)
        order = torch.argsort(member, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = member[order] * width + torch.arange(len(order), device=member.device) - starts[member[order]]
        market = obs.market.new_zeros(k * width, *obs.market.shape[1:])
        position = obs.position.new_zeros(k * width, *obs.position.shape[1:])
        market[slot], position[slot] = obs.market[order], obs.position[order]
        values = self.member_heads(market, position)[1].reshape(-1)[slot]
        return torch.empty_like(values).index_put_((order,), values)

    def members_of(self, env: torch.Tensor, n_envs: int) -> torch.Tensor:
        """The member of each training env index (member k owns envs k*n .. (k+1)*n of ``n_envs``)."""
        return env // (n_envs // self.size)


class PopulationPolicy:
    """The members' deterministic policies, member k on evaluation env k (``run_policies`` names them)."""

    def __init__(self, model: Population) -> None:
        self.model = model
        self.names = [f"member_{k}" for k in range(model.size)]

    @torch.no_grad()
    def __call__(self, obs: Obs) -> torch.Tensor:
        dist, _ = self.model(obs)
        return dist.mean
