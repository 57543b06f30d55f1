"""Scale-aware value targets: running statistics of the returns the critic learns.

The critic's raw targets are discounted sums of rewards in log-percent (``reward_scale``), whose size depends
on the market, the horizon and the policy; a fixed value clip or learning rate means something different for
each. :class:`ValueNorm` keeps an exponential moving average (debiased, like Adam's moments) of the mean and
variance of the value targets; the critic predicts *normalised* values, its targets are normalised with the
latest statistics, and GAE, self-imitation and reports work on denormalised values (the MAPPO "value
normalisation" of Yu et al., 2022; van Hasselt et al., 2016 without PopArt's output preservation).
``algo.vf_clip`` is then in units of the returns' standard deviation, whatever their raw scale.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def pooled_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean, mean square and count of ``x`` over every DDP rank (each rank holds as many values), float64.
    On one process: ``x``'s own. Running statistics built from these are the same on every rank."""
    x = x.detach().double().flatten()
    m = torch.stack([x.mean(), (x * x).mean()])
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        dist.all_reduce(m)
        m = m / world
    return m[0], m[1], x.numel() * world


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (Chan et al. parallel update), as buffers,
    so they are saved with the module's state dict."""

    def __init__(self, eps: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        m, sq, n = pooled_moments(x)
        v = (sq - m * m).clamp_min(0.0)
        delta, tot = m - self.mean, self.count + n
        new_mean = self.mean + delta * n / tot
        m2 = self.var * self.count + v * n + delta**2 * self.count * n / tot
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / tot)
        self.count.copy_(tot)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()


class ValueNorm(nn.Module):
    """Debiased EMA of the targets' first two moments; ``beta`` per update (0.99: ~100 iterations' memory)."""

    def __init__(self, beta: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        self.beta, self.eps = beta, eps
        self.register_buffer("m1", torch.zeros((), dtype=torch.float64))
        self.register_buffer("m2", torch.zeros((), dtype=torch.float64))
        self.register_buffer("debias", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        m, sq, _ = pooled_moments(x)
        b = self.beta
        self.m1.mul_(b).add_((1 - b) * m)
        self.m2.mul_(b).add_((1 - b) * sq)
        self.debias.mul_(b).add_(1 - b)

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std); (0, 1) before the first update."""
        d = self.debias.clamp_min(1e-300)  # no host sync: before any update m1 = m2 = 0 gives (0, 1)
        mean = self.m1 / d
        var = torch.where(self.debias > 0, (self.m2 / d - mean**2).clamp_min(self.eps), torch.ones_like(d))
        return mean, var.sqrt()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.stats()
        return ((x.double() - mean) / std).to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.stats()
        return (x.double() * std + mean).to(x.dtype)
