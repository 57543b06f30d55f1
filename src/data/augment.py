"""Time-series augmentation of training episodes (``augmentation=...``).

What is augmented is the *market the env steps through*, not the observation: each training
episode gets its own OHLCV path, cut from the training split, transformed, rebuilt into prices,
and its indicators recomputed causally from the new path (:mod:`src.data.torch_features`). The
reward is paid on the same path the agent observes, so the agent is never paid for prices it did
not see; costs are unchanged. Validation and test are never augmented
(:class:`src.envs.augmented_env.AugmentedEnv` only builds training episodes).

A bar is represented by five parts, so that any transform of them rebuilds a valid OHLCV bar:

    gap   = log(open_t / close_{t-1})      body = log(close_t / open_t)
    up    = log(high_t / max(open, close))  down = log(min(open, close) / low_t)   (both >= 0)
    logvol = log(volume_t)

Transforms (Um et al., 2017; Le Guennec et al., 2016; Zhang et al., 2018; Yun et al., 2019), each
applied to an episode with its own probability ``p``:

- ``Jitter``: Gaussian noise on gap and body, ``sigma`` times their trailing RMS over the path's previous
  ``lookback`` bars: causal, so a bar's noise says nothing about the volatility that follows it.
- ``MagnitudeWarp``: gap, body and wicks times a smooth random curve around 1 (cubic through
  ``knots`` random knots, std ``sigma``): volatility varies smoothly along the path.
- ``TimeWarp``: whole bars resampled along a smooth random time distortion (speed = a smooth
  curve, std ``sigma``; nearest bar). Every output bar is a real bar, so the return distribution
  (its sign balance included) is kept; stretched stretches repeat bars.
- ``WindowSlice``: a random slice of ``ratio`` of the path stretched back to full length.
- ``MixUp``: the parts of two training segments blended, ``lam x + (1 - lam) y``,
  ``lam ~ Beta(alpha, alpha)``; ``lam = 1`` returns the first path exactly.
- ``CutMix``: a span of ``(1 - lam)`` of the bars spliced in from another segment.

Everything is batched in torch over the episodes (no Python loop over them); random draws come
from the env's generator, so a resumed run augments exactly as the uninterrupted one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

PARTS = ("gap", "body", "up", "down", "logvol")
RETURNS = slice(0, 2)  # gap, body
MOVES = slice(0, 4)  # gap, body and the wicks: what magnitude warping scales


def bar_parts(o: torch.Tensor, h: torch.Tensor, lo: torch.Tensor, c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(S, 5) parts of S consecutive bars; the first bar's gap is 0 (its previous close is unknown here)."""
    prev = torch.cat([o[:1], c[:-1]])
    parts = torch.stack(
        [
            (o / prev).log(),
            (c / o).log(),
            (h / torch.maximum(o, c)).log().clamp_min(0),
            (torch.minimum(o, c) / lo).log().clamp_min(0),
            v.clamp_min(1e-12).log(),
        ],
        dim=-1,
    )
    return parts


def rebuild(parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """OHLCV (each (B, S)) of parts (B, S, 5), the close before the first bar being 1."""
    gap, body, up, down, logvol = parts.unbind(-1)
    logc = (gap + body).cumsum(dim=1)
    logo = logc - body
    o, c = logo.exp(), logc.exp()
    h = torch.maximum(o, c) * up.clamp_min(0).exp()
    lo = torch.minimum(o, c) * (-down.clamp_min(0)).exp()
    return o, h, lo, c, logvol.exp()


def smooth_curve(b: int, s: int, knots: int, sigma: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(B, S) smooth random curves around 1: Catmull-Rom cubic through ``knots + 2`` knots ~ N(1, sigma)."""
    k = knots + 2
    y = 1 + sigma * torch.randn(b, k, generator=gen, device=like.device, dtype=like.dtype)
    pos = torch.linspace(0, k - 1, s, device=like.device, dtype=like.dtype)
    i = pos.floor().long().clamp(max=k - 2)
    u = (pos - i)[None]
    pad = torch.cat([y[:, :1], y, y[:, -1:]], dim=1)  # clamped ends: knot j is pad[j + 1]
    p0, p1, p2, p3 = (pad[:, i + d] for d in range(4))
    return 0.5 * (2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (3 * p1 - p0 - 3 * p2 + p3) * u**3)


def beta_sample(alpha: float, b: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(B,) draws of Beta(alpha, alpha), reproducible from ``gen`` alone (not the global RNG)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a = torch.full((b,), float(alpha), dtype=torch.float64)
        lam = torch.distributions.Beta(a, a).sample()
    return lam.to(device=like.device, dtype=like.dtype)


def _resample(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Bars ``idx`` (B, S) of x (B, S, P)."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))


class Transform(ABC):
    """One augmentation; ``apply`` transforms every episode, :class:`Augmenter` keeps it with probability p."""

    name = "transform"

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation {self.name}: p must be in [0, 1], got {p}")
        self.p = float(p)

    @abstractmethod
    def apply(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, S, 5) parts -> transformed parts and per-episode (B,) parameters of what was applied."""


class Jitter(Transform):
    name = "jitter"

    def __init__(self, p: float = 0.5, sigma: float = 0.1, lookback: int = 20) -> None:
        super().__init__(p)
        if lookback < 1:
            raise ValueError(f"augmentation jitter: lookback must be >= 1, got {lookback}")
        self.sigma, self.lookback = float(sigma), int(lookback)

    @staticmethod
    def trailing_rms(r: torch.Tensor, lookback: int) -> torch.Tensor:
        """(B, S, C) -> RMS of each series over the ``lookback`` bars *before* each bar (bar 0: its own size)."""
        c = torch.cat([torch.zeros_like(r[:, :1]), torch.cumsum(r**2, dim=1)], dim=1)  # c[t] = sum over s < t
        t = torch.arange(r.shape[1], device=r.device)
        lo = (t - lookback).clamp_min(0)
        count = (t - lo).clamp_min(1).to(r.dtype)[None, :, None]
        ms = (c[:, t] - c[:, lo]) / count
        return torch.where(t[None, :, None] > 0, ms, r**2).sqrt()

    def apply(self, x, gen):
        y = x.clone()
        sd = self.trailing_rms(x[..., RETURNS], self.lookback)
        noise = torch.randn(x.shape[0], x.shape[1], 2, generator=gen, device=x.device, dtype=x.dtype)
        y[..., RETURNS] += self.sigma * sd * noise
        return y, {"sigma": torch.full((x.shape[0],), self.sigma, dtype=x.dtype, device=x.device)}


class MagnitudeWarp(Transform):
    name = "magnitude_warp"

    def __init__(self, p: float = 0.5, sigma: float = 0.2, knots: int = 4) -> None:
        super().__init__(p)
        self.sigma, self.knots = float(sigma), int(knots)

    def apply(self, x, gen):
        curve = smooth_curve(x.shape[0], x.shape[1], self.knots, self.sigma, gen, x).clamp_min(0.0)
        y = x.clone()
        y[..., MOVES] *= curve[..., None]
        return y, {"scale_dev": (curve - 1).abs().mean(dim=1)}


class TimeWarp(Transform):
    name = "time_warp"

    def __init__(self, p: float = 0.5, sigma: float = 0.2, knots: int = 4) -> None:
        super().__init__(p)
        self.sigma, self.knots = float(sigma), int(knots)

    def apply(self, x, gen):
        b, s, _ = x.shape
        speed = smooth_curve(b, s, self.knots, self.sigma, gen, x).clamp_min(0.1)
        cum = speed.cumsum(dim=1)
        tau = (cum - cum[:, :1]) / (cum[:, -1:] - cum[:, :1]) * (s - 1)
        idx = tau.round().long().clamp(0, s - 1)
        shift = (idx - torch.arange(s, device=x.device)).abs().to(x.dtype).mean(dim=1)
        return _resample(x, idx), {"shift_bars": shift}


class WindowSlice(Transform):
    name = "window_slice"

    def __init__(self, p: float = 0.5, ratio: float = 0.9) -> None:
        super().__init__(p)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"augmentation window_slice: ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)

    def apply(self, x, gen):
        b, s, _ = x.shape
        span = self.ratio * (s - 1)
        start = torch.rand(b, 1, generator=gen, device=x.device, dtype=x.dtype) * (s - 1 - span)
        idx = (start + torch.linspace(0, span, s, device=x.device, dtype=x.dtype)).round().long().clamp(0, s - 1)
        return _resample(x, idx), {"ratio": torch.full((b,), self.ratio, dtype=x.dtype, device=x.device)}


class MixUp(Transform):
    name = "mixup"

    def __init__(self, p: float = 0.5, alpha: float = 0.4) -> None:
        super().__init__(p)
        if alpha <= 0:
            raise ValueError(f"augmentation mixup: alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    @staticmethod
    def mix(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``lam x + (1 - lam) y`` per episode (lam (B,))."""
        lam = lam[:, None, None]
        return lam * x + (1 - lam) * y

    def apply(self, x, gen):
        b = x.shape[0]
        lam = beta_sample(self.alpha, b, gen, x)
        partner = torch.randperm(b, generator=gen, device=x.device)
        return self.mix(x, x[partner], lam), {"lambda": lam}


class CutMix(Transform):
    name = "cutmix"

    def __init__(self, p: float = 0.5, alpha: float = 1.0) -> None:
        super().__init__(p)
        if alpha <= 0:
            raise ValueError(f"augmentation cutmix: alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def apply(self, x, gen):
        b, s, _ = x.shape
        lam = beta_sample(self.alpha, b, gen, x)
        span = ((1 - lam) * s).round().long()
        start = (torch.rand(b, generator=gen, device=x.device, dtype=x.dtype) * (s - span + 1)).floor().long()
        t = torch.arange(s, device=x.device)[None]
        cut = (t >= start[:, None]) & (t < (start + span)[:, None])
        partner = torch.randperm(b, generator=gen, device=x.device)
        return torch.where(cut[..., None], x[partner], x), {"cut_fraction": span.to(x.dtype) / s}


class Augmenter:
    """A list of transforms applied in order, each to a random subset of the episodes (probability p)."""

    def __init__(self, transforms: dict[str, Transform] | list[Transform] | None = None) -> None:
        if isinstance(transforms, dict) or hasattr(transforms, "values"):  # Hydra: a mapping, in config order
            transforms = [t for t in transforms.values() if t is not None]
        self.transforms = list(transforms or [])
        names = [t.name for t in self.transforms]
        if len(set(names)) != len(names):
            raise ValueError(f"augmentation: a transform is listed twice: {names}")

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Augmented parts (B, S, 5) and what was applied: per transform the rate and the mean of its
        parameters over the episodes it was applied to."""
        stats: dict[str, torch.Tensor] = {}
        for tr in self.transforms:
            on = torch.rand(x.shape[0], generator=gen, device=x.device) < tr.p
            y, st = tr.apply(x, gen)
            x = torch.where(on[:, None, None], y, x)
            stats[f"{tr.name}/rate"] = on.float().mean()
            n = on.sum().clamp_min(1)
            for k, v in st.items():
                stats[f"{tr.name}/{k}"] = (v * on).sum() / n
        return x, stats
