"""Training env whose episodes walk their own (augmented) price paths: ``augmentation=...``.

Every ``path_length`` steps the N envs get a new generation of paths: N segments cut at random from
the *training split only* (raw bars, with a feature warm-up before the first decision), transformed
by an :class:`src.data.augment.Augmenter`, rebuilt into OHLCV, their features recomputed causally
(:func:`src.data.torch_features.path_features`) and normalised with the market's training
statistics. Observations and rewards both come from the new path, with the env's costs unchanged;
validation and test use :class:`MarketEnv` on the real data and are never touched.

Episodes tile a path: one of ``max_len`` bars ends (or goes bankrupt) and the next starts at the
same bar of the same path with fresh equity; at the end of the path every episode is truncated and
the next generation starts. All envs step together, so the end of a path is known on the host
without a device synchronisation. Two generations are kept (double buffer) so the final
observations of episodes cut at a path's end stay readable until the rollout that cut them has
bootstrapped them; that needs ``path_length >= rollout_steps``, which the constructor enforces.
"""

from __future__ import annotations

import torch

from src.core.errors import ConfigError
from src.data.augment import Augmenter, bar_parts, rebuild
from src.data.features import warmup_bars
from src.data.market import NORM_CLIP, Market
from src.data.torch_features import path_features
from src.envs.market_env import MarketEnv, Obs

WARMUP = 3 * warmup_bars()  # bars of each path before its first observation: the indicators settle


class AugmentedEnv(MarketEnv):
    """N training episodes on freshly generated paths (see the module docstring).

    Args:
        market: the data (only its training split is used).
        num_envs: N.
        augmenter: the transforms; an empty one gives real (unaugmented) segments.
        generator: draws segments and every augmentation (its state is in :meth:`state_dict`).
        min_path: at least this many steps per path (the rollout length).
        episode_length: bars per episode (default ``market.episode_length``).
        group_size: envs in a group share one path (GRPO).
        compile: the fused, compiled step (:class:`MarketEnv`).
    """

    def __init__(
        self,
        market: Market,
        num_envs: int,
        augmenter: Augmenter,
        generator: torch.Generator,
        min_path: int = 1,
        episode_length: int | None = None,
        group_size: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__(
            market,
            "train",
            num_envs,
            True,
            generator,
            episode_length=episode_length,
            group_size=group_size,
            compile=compile,
        )
        self.augmenter = augmenter
        self.path_length = max(self.max_len, int(min_path))
        w = market.window
        self.span = w + self.path_length  # stored bars per path: w - 1 of history, the decisions, the last fill
        self.raw_len = WARMUP + self.span
        dev = market.device
        n_train = market.splits["train"][1]
        if self.raw_len + 1 > n_train:
            raise ConfigError(
                f"augmentation: a training path needs {self.raw_len + 1} bars ({WARMUP} warm-up + window {w} + "
                f"{self.path_length} steps), the training split of {market.source} has {n_train}"
            )
        b = market.bars.iloc[:n_train]
        ohlcv = [torch.tensor(b[k].to_numpy(dtype="float64"), device=dev) for k in ("open", "high", "low", "close")]
        ohlcv.append(torch.tensor(b["volume"].to_numpy(dtype="float64"), device=dev))
        self._raw = bar_parts(*ohlcv)  # (n_train, 5); bar 0's gap is unknown and never used
        self._raw_hi = n_train - self.raw_len  # last segment start; segments start at bar >= 1
        self._mean = torch.as_tensor(market.norm_mean, dtype=torch.float64, device=dev)
        self._std = torch.as_tensor(market.norm_std, dtype=torch.float64, device=dev)
        n, s, f = num_envs, self.span, market.num_features
        self._feat = torch.zeros(2 * n * s, f, device=dev)
        self._windows = None  # observations come from the generated paths, row by row
        self._pre = torch.zeros(2 * n * s, device=dev)
        self._post = torch.zeros(2 * n * s, device=dev)
        if self._carry is not None:  # each path keeps the dividends and calendar of the real bars it was cut from
            self._carry = (torch.zeros(2 * n * s, device=dev), torch.zeros(2 * n * s, device=dev))
        self._env_base = torch.arange(n, device=dev) * s
        self.slot = 1  # the next generation goes to slot 0
        self.pos = 0  # steps into the current generation (host side: no device sync)
        self.generations = 0
        self.segment_starts = torch.zeros(n // group_size, dtype=torch.long, device=dev)
        self.stats: dict[str, torch.Tensor] = {}

    # ---- generations of paths ----
    def _segment_starts(self, k: int) -> torch.Tensor:
        if self.start_pool is not None:
            pick = torch.randint(0, len(self.start_pool), (k,), generator=self.gen, device=self.t.device)
            return self.start_pool[pick]
        return torch.randint(1, self._raw_hi + 1, (k,), generator=self.gen, device=self.t.device)

    def regime_order(self) -> torch.Tensor:
        """Every segment start, calmest first: realised volatility of the real bars its path walks."""
        starts = torch.arange(1, self._raw_hi + 1, device=self.t.device)
        first_decision = starts + WARMUP + self.m.window - 1
        return starts[torch.argsort(self._realised(first_decision, self.path_length), stable=True)]

    def _generate(self) -> None:
        """Build the next generation into the other slot and point every env at its first decision."""
        g, w = self.group_size, self.m.window
        k = self.n // g
        starts = self._segment_starts(k)
        idx = starts[:, None] + torch.arange(self.raw_len, device=starts.device)
        parts = self._raw[idx]  # (k, raw_len, 5)
        parts, stats = self.augmenter(parts, self.gen) if self.augmenter else (parts, {})
        o, h, lo, c, v = rebuild(parts)
        feats = path_features(o, h, lo, c, v)[:, WARMUP:]
        z = ((feats - self._mean) / self._std).clamp(-NORM_CLIP, NORM_CLIP)
        gap, body = parts[:, WARMUP:, 0], parts[:, WARMUP:, 1]
        if self.m.fill == "open":
            pre, post = gap.expm1(), body.expm1()
        else:
            pre, post = torch.zeros_like(gap), (gap + body).expm1()
        carry = [x[idx][:, WARMUP:] for x in (self.m.dividend, self.m.accrual)] if self._carry is not None else []
        if g > 1:
            z, pre, post, *carry = (x.repeat_interleave(g, dim=0) for x in (z, pre, post, *carry))
        self.slot = 1 - self.slot
        n, s = self.n, self.span
        lo_, hi_ = self.slot * n * s, (self.slot + 1) * n * s
        self._feat[lo_:hi_] = z.reshape(n * s, -1).to(self._feat.dtype)
        self._pre[lo_:hi_] = pre.reshape(-1).to(self._pre.dtype)
        self._post[lo_:hi_] = post.reshape(-1).to(self._post.dtype)
        for buf, x in zip(self._carry or (), carry, strict=True):
            buf[lo_:hi_] = x.reshape(-1).to(buf.dtype)
        base = lo_ + self._env_base
        self._first = base + (w - 1)
        self._stop = base + (w - 1) + self.path_length
        self.pos = 0
        self.generations += 1
        self.segment_starts = starts
        self.stats = {**stats, "generations": torch.tensor(float(self.generations))}

    # ---- MarketEnv hooks ----
    def reset(self) -> Obs:
        self._generate()
        self.t.copy_(self._first)
        self.steps.zero_()
        self.position.zero_()
        self.equity.fill_(1.0)
        return self._write_obs(self._obs)

    def step(self, action: torch.Tensor):
        self.pos += 1
        return super().step(action)

    def _restart_points(self, t: torch.Tensor) -> torch.Tensor:
        if self.pos >= self.path_length:  # every episode was cut at the path's end: a new generation
            self._generate()
            return self._first
        return t + 1  # the next episode continues on the same path, from the bar this step reaches

    # ---- checkpoints: the paths themselves travel, so a resumed run walks the same bars ----
    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "augmented": {
                "feat": self._feat.cpu(),
                "pre": self._pre.cpu(),
                "post": self._post.cpu(),
                "carry": None if self._carry is None else [x.cpu() for x in self._carry],
                "slot": self.slot,
                "pos": self.pos,
                "generations": self.generations,
                "first": self._first.cpu(),
                "stop": self._stop.cpu(),
                "path_length": self.path_length,
            },
        }

    def load_state_dict(self, saved: dict) -> None:
        if "augmented" not in saved:
            raise ValueError("the checkpoint was trained without augmentation")
        a = saved["augmented"]
        if a["path_length"] != self.path_length or a["feat"].shape != self._feat.shape:
            raise ValueError(
                f"the checkpoint's paths ({a['path_length']} steps) do not fit this env's ({self.path_length})"
            )
        super().load_state_dict(saved)
        dev = self.t.device
        self._feat.copy_(a["feat"].to(dev))
        self._pre.copy_(a["pre"].to(dev))
        self._post.copy_(a["post"].to(dev))
        for buf, x in zip(self._carry or (), a.get("carry") or (), strict=True):
            buf.copy_(x.to(dev))
        self.slot, self.pos, self.generations = int(a["slot"]), int(a["pos"]), int(a["generations"])
        self._first, self._stop = a["first"].to(dev), a["stop"].to(dev)
