"""A trading env vectorised in torch: N episodes advance together as tensors.

Accounting (one step = the agent at the close of bar t chooses a target
weight ``a`` in [-1, 1]; the step realises bar t+1):

1. the held weight ``p`` earns ``pre`` (the gap from close t to the fill) and
   drifts to ``w = p (1 + pre) / (1 + p pre)``;
2. at the fill (open of t+1 by default; close of t with ``fill=close``, an
   optimistic, labelled option) the book is rebalanced to ``a`` if
   ``|a - w| >= min_trade``; turnover ``|a - w|`` pays ``costs.rate``;
3. the new weight earns ``post`` to the close of t+1 and drifts again.

Equity growth over the step is ``(1 + p pre)(1 - turnover rate)(1 + a post)``;
the reward is its log, net of costs. Gross return, cost, turnover and equity
are reported separately in ``info``. An episode is *terminated* when equity
falls to ``min_equity`` (bankruptcy: no bootstrap) and *truncated* at its time
limit or the end of the split (bootstrap from the final observation).
Observations are written into preallocated buffers: no per-step allocation
of the (N, window, F) window. They are gathered from a (bars, window * F) view
of every window (:func:`all_windows`: row k starts at feature row k, so it costs
no memory beyond the features, which stay in cache) with one contiguous row copy
per env, unless its logical size would exceed ``MAX_WINDOWS_BYTES``.
``compile=True`` fuses the step (:func:`fused_transition`) into one kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from src.data.market import Market
from src.utils import compile_static

EPS = 1e-12
MAX_WINDOWS_BYTES = 512 * 2**20  # above this, observations are gathered row by row instead


def all_windows(features: torch.Tensor, window: int) -> torch.Tensor:
    """(T - window + 1, window * F): row k holds feature rows k .. k + window - 1, flattened.

    An overlapping view of the (contiguous) features with row stride F: no copy of the windows is made.
    """
    t, f = features.shape
    return features.contiguous().unfold(0, window, 1).transpose(1, 2).reshape(t - window + 1, window * f)


@dataclass
class Obs:
    """Observation batch: the last ``window`` feature rows, the current weight and, for a
    goal-conditioned policy (``replay=her``), its goal features."""

    market: torch.Tensor  # (N, window, F)
    position: torch.Tensor  # (N, 1)
    goal: torch.Tensor | None = None  # (N, 2), see src/rl/her.py


class Scalars(NamedTuple):
    """The constants of :func:`account` as 0-d tensors on the env's device: an op between a tensor and a
    Python number first wraps the number into a tensor, which costs more than the op itself at N ~ 1000."""

    one: torch.Tensor
    zero: torch.Tensor
    eps: torch.Tensor
    rate: torch.Tensor  # cost per unit of turnover
    min_trade: torch.Tensor  # smallest rebalance (at least eps)

    @classmethod
    def make(cls, rate: float, min_trade: float, device: torch.device | str = "cpu") -> Scalars:
        values = (1.0, 0.0, EPS, rate, max(min_trade, EPS))
        return cls(*(torch.tensor(v, dtype=torch.float32, device=device) for v in values))


def account(
    p: torch.Tensor, pre: torch.Tensor, post: torch.Tensor, a: torch.Tensor, k: Scalars
) -> tuple[torch.Tensor, ...]:
    """One step's accounting for held weights ``p`` and target weights ``a`` (see the module docstring).

    Returns ``(held, turnover, gross, growth, drifted_after, reward)``: the weight after the fill, the
    turnover paid for, gross and net equity growth factors, the weight after the bar's drift (the next
    step's ``p``) and the reward ``log(growth)``.
    """
    g1 = k.one + p * pre
    drifted = torch.where(g1 > k.eps, p * (k.one + pre) / g1.clamp_min(k.eps), k.zero)
    turnover = (a - drifted).abs()
    trade = turnover >= k.min_trade
    held = torch.where(trade, a, drifted)
    turnover = torch.where(trade, turnover, k.zero)
    g2 = k.one + held * post
    gross = g1 * g2
    growth = (gross * (k.one - turnover * k.rate)).clamp_min(k.zero)
    after = torch.where(g2 > k.eps, held * (k.one + post) / g2.clamp_min(k.eps), k.zero)
    return held, turnover, gross, growth, after, torch.log(growth.clamp_min(k.eps))


class Transition(NamedTuple):
    """What one step of :func:`transition` returns: the next state (restarted where an episode ended,
    with auto-reset) and the step's outputs."""

    t: torch.Tensor  # (N,) the bar each env now stands at (its next episode's first bar where done)
    steps: torch.Tensor  # (N,) steps into the current episode
    position: torch.Tensor  # (N,) weight held into the next step
    equity: torch.Tensor  # (N,) equity of the current episode
    reward: torch.Tensor  # log growth net of costs
    terminated: torch.Tensor
    truncated: torch.Tensor
    held: torch.Tensor  # weight after the fill
    turnover: torch.Tensor
    gross_return: torch.Tensor  # gross growth - 1
    cost: torch.Tensor  # gross - net growth
    net_return: torch.Tensor  # net growth - 1
    final_equity: torch.Tensor  # equity at the end of the step (before any restart)
    final_t: torch.Tensor  # the bar the step reached (before any restart)
    final_position: torch.Tensor  # the weight after the bar's drift (before any restart)


def transition(
    t: torch.Tensor,
    steps: torch.Tensor,
    position: torch.Tensor,
    equity: torch.Tensor,
    action: torch.Tensor,
    pre: torch.Tensor,
    post: torch.Tensor,
    k: Scalars,
    limits: tuple[torch.Tensor, torch.Tensor],
    max_len: torch.Tensor,
    stop: torch.Tensor,
    min_equity: torch.Tensor,
    restart: torch.Tensor | None,
) -> Transition:
    """One env step for N envs as a pure function (see the module docstring); ``restart`` (N,) holds the
    bars where an episode that ends now starts its next one (None: no auto-reset).

    Bankruptcy (equity at or below ``min_equity``) terminates; ``max_len`` steps or reaching ``stop`` truncates.
    """
    a = action.clamp(limits[0], limits[1])
    nxt = t + 1
    held, turnover, gross, growth, pos, reward = account(position, pre[nxt], post[nxt], a, k)
    final_equity = equity * growth
    steps = steps + 1
    terminated = final_equity <= min_equity
    truncated = ~terminated & ((steps >= max_len) | (nxt >= stop))
    if restart is None:
        t_next, position_next, equity_next = nxt.clone(), pos, final_equity  # a copy: reset() writes t in place
    else:  # same-step reset without a host sync: where() over all envs
        done = terminated | truncated
        t_next = torch.where(done, restart, nxt)
        steps = steps.masked_fill(done, 0)
        position_next = pos.masked_fill(done, k.zero)
        equity_next = final_equity.masked_fill(done, k.one)
    return Transition(
        t_next, steps, position_next, equity_next, reward, terminated, truncated,
        held, turnover, gross - k.one, gross - growth, growth - k.one, final_equity, nxt, pos,
    )  # fmt: skip


def fused_transition(
    *args,
    windows: torch.Tensor | None,
    feat: torch.Tensor,
    offsets: torch.Tensor,
    market_out: torch.Tensor,
    position_out: torch.Tensor,
) -> Transition:
    """:func:`transition`, then the next observation written into ``market_out`` (N, window, F) and
    ``position_out`` (N, 1): under ``torch.compile`` the accounting, the restarts and the window gather
    become one loop over the envs (one kernel, no per-op dispatch), which is what ``compile=True`` runs."""
    tr = transition(*args)
    w = offsets.numel()
    if windows is not None:
        market_out.view(len(tr.t), -1).copy_(windows[tr.t - (w - 1)])
    else:
        market_out.copy_(feat[tr.t[:, None] + offsets])
    position_out.copy_(tr.position[:, None])
    return tr


class MarketEnv:
    """N parallel episodes over one split of a :class:`Market`.

    Args:
        market: the data, already on the target device.
        split: ``train``, ``val`` or ``test``.
        num_envs: N.
        random_start: training mode (random starts, episodes of
            ``market.episode_length``); otherwise every episode walks the
            whole split from its first decision bar once.
        generator: torch generator for start times (on ``market.device``).
        auto_reset: restart finished episodes inside ``step`` (default: with ``random_start``).
        episode_length: training episode length; default ``market.episode_length``.
        group_size: random starts are drawn once per group of this many consecutive envs, which
            then walk the same bars (GRPO's groups); ``num_envs`` must be a multiple of it.
        compile: run the step through ``torch.compile`` (:func:`fused_transition`): the same results as
            eager to float rounding, in one kernel per step.
    """

    def __init__(
        self,
        market: Market,
        split: str,
        num_envs: int,
        random_start: bool = True,
        generator: torch.Generator | None = None,
        auto_reset: bool | None = None,
        episode_length: int | None = None,
        group_size: int = 1,
        compile: bool = False,
    ) -> None:
        if num_envs <= 0:
            raise ValueError(f"num_envs must be > 0, got {num_envs}")
        if group_size < 1 or num_envs % group_size:
            raise ValueError(f"num_envs ({num_envs}) must be a positive multiple of group_size ({group_size})")
        self.group_size = group_size
        self.start_pool: torch.Tensor | None = None
        self.m, self.split, self.n, self.random_start = market, split, num_envs, random_start
        self.auto_reset = random_start if auto_reset is None else auto_reset
        self.first, self.last = market.decision_range(split)
        length = market.episode_length if episode_length is None else episode_length
        self.max_len = length if random_start else self.last - self.first + 1
        self.rate = market.costs.rate  # a property: a curriculum may change it between steps
        dev = market.device
        # what step() and the observations read: the market's own series (subclasses swap in their paths)
        self._feat, self._pre, self._post = market.features, market.pre, market.post
        # reaching this bar ends the episode (the end of the split; subclasses: of each env's path)
        self._stop = torch.tensor(self.last + 1, device=dev)
        self._min_equity = torch.tensor(market.min_equity, dtype=torch.float32, device=dev)
        self.gen = generator
        self.t = torch.full((num_envs,), self.first, dtype=torch.long, device=dev)
        self.steps = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self.position = torch.zeros(num_envs, device=dev)
        self.equity = torch.ones(num_envs, device=dev)
        w, f = market.window, market.num_features
        self._offsets = torch.arange(-w + 1, 1, device=dev)
        self._idx = torch.empty(num_envs, w, dtype=torch.long, device=dev)
        fits = market.features.numel() * w * market.features.element_size() <= MAX_WINDOWS_BYTES
        self._windows = all_windows(market.features, w) if fits else None  # subclasses with their own paths: None
        self._obs = Obs(torch.empty(num_envs, w, f, device=dev), torch.empty(num_envs, 1, device=dev))
        self._limits = tuple(torch.tensor(float(x), device=dev) for x in market.position_limits)
        # compile=True: torch.compile the whole step (a one-off compile of a few seconds per N; needs a C++
        # compiler on a CPU), recompiled for nothing a curriculum changes (rate and max_len are tensors)
        self._fused = compile_static(fused_transition) if compile else None

    @property
    def rate(self) -> float:
        """Cost per unit of turnover (``market.costs.rate``; a curriculum scales it)."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = float(value)
        self._k = Scalars.make(self._rate, self.m.min_trade, self.m.device)

    @property
    def max_len(self) -> int:
        """Steps after which a training episode is truncated (a curriculum may shorten it)."""
        return self._max_len

    @max_len.setter
    def max_len(self, value: int) -> None:
        self._max_len = int(value)
        self._max_len_t = torch.tensor(self._max_len, device=self.m.device)

    def _starts(self, k: int) -> torch.Tensor:
        if not self.random_start:
            return torch.full((k,), self.first, dtype=torch.long, device=self.t.device)
        g = self.group_size if k == self.n else 1
        if self.start_pool is not None:  # a curriculum's subset of start bars
            pick = torch.randint(0, len(self.start_pool), (k // g,), generator=self.gen, device=self.t.device)
            starts = self.start_pool[pick]
        else:
            hi = max(self.first, self.last - self.max_len + 1)  # prefer full-length episodes
            starts = torch.randint(self.first, hi + 1, (k // g,), generator=self.gen, device=self.t.device)
        return starts.repeat_interleave(g) if g > 1 else starts

    def _realised(self, first_bar: torch.Tensor, length: int) -> torch.Tensor:
        """Realised volatility of the ``length`` bars after each of ``first_bar`` (the market's own returns)."""
        growth = torch.log1p(self.m.pre) + torch.log1p(self.m.post)  # close-to-close log return of each bar
        idx = first_bar[:, None] + 1 + torch.arange(length, device=first_bar.device)
        return growth[idx.clamp(max=len(growth) - 1)].std(dim=1)

    def regime_order(self) -> torch.Tensor:
        """Every training start bar, calmest episode first (realised volatility of a full-length episode).

        For a curriculum: this orders *training* episodes only, by the bars they will walk; it does
        not reach an observation, and validation and test are not involved.
        """
        hi = max(self.first, self.last - self.max_len + 1)
        starts = torch.arange(self.first, hi + 1, device=self.t.device)
        return starts[torch.argsort(self._realised(starts, self.max_len), stable=True)]

    def set_start_pool(self, pool: torch.Tensor | None) -> None:
        """Draw training starts from ``pool`` (non-empty) from the next episode on; None: from every bar."""
        if pool is not None and len(pool) == 0:
            raise ValueError("a start pool must not be empty")
        self.start_pool = pool

    def _gather(self, t: torch.Tensor, out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Write the windows ending at bars ``t`` (K,) into ``out`` (K, window, F); ``idx`` (K, window) is scratch."""
        w, f = self.m.window, self.m.num_features
        if self._windows is not None:
            torch.sub(t, w - 1, out=idx[:, 0])
            return torch.index_select(self._windows, 0, idx[:, 0], out=out.view(len(t), w * f)).view_as(out)
        torch.add(t[:, None], self._offsets, out=idx)
        return torch.index_select(self._feat, 0, idx.view(-1), out=out.view(-1, f)).view_as(out)

    def _write_obs(self, out: Obs) -> Obs:
        self._gather(self.t, out.market, self._idx)
        out.position.copy_(self.position[:, None])
        return out

    def reset(self) -> Obs:
        """Start every episode afresh and return the first observation (a view of a reused buffer)."""
        self.t.copy_(self._starts(self.n))
        self.steps.zero_()
        self.position.zero_()
        self.equity.fill_(1.0)
        return self._write_obs(self._obs)

    def step(self, action: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Advance every episode one bar.

        Args:
            action: (N,) target weights; clipped to ``market.position_limits`` (default [-1, 1]).

        Returns:
            obs, reward (log growth net of costs), terminated, truncated, info.
            With ``auto_reset``, for finished episodes ``obs`` is already the next
            episode's first observation; ``info["final_t"]`` and
            ``info["final_position"]`` give the state they ended on, for
            :meth:`observe` (bootstrapping truncated episodes).
        """
        a = action.detach().reshape(self.n).to(self.position.dtype)
        args = (self.t, self.steps, self.position, self.equity, a, self._pre, self._post, self._k, self._limits)
        args += (self._max_len_t, self._stop, self._min_equity)  # read before a restart may swap _stop (paths)
        args += (self._restart_points(self.t) if self.auto_reset else None,)
        if self._fused is not None:  # compile=True: the step and the observation in one kernel
            tr = self._fused(*args, windows=self._windows, feat=self._feat, offsets=self._offsets,
                             market_out=self._obs.market, position_out=self._obs.position)  # fmt: skip
        else:
            tr = transition(*args)
        self.t, self.steps, self.position, self.equity = tr.t, tr.steps, tr.position, tr.equity
        info = {
            "t": tr.final_t,
            "position": tr.held,
            "turnover": tr.turnover,
            "gross_return": tr.gross_return,
            "cost": tr.cost,
            "net_return": tr.net_return,
            "equity": tr.final_equity,
            "final_t": tr.final_t,
            "final_position": tr.final_position,
        }
        obs = self._obs if self._fused is not None else self._write_obs(self._obs)
        return obs, tr.reward, tr.terminated, tr.truncated, info

    def observe(self, t: torch.Tensor, position: torch.Tensor) -> Obs:
        """A fresh observation for arbitrary bars and weights (off the hot path, e.g. final states)."""
        t = t.reshape(-1)
        k, w, f = len(t), self.m.window, self.m.num_features
        market = torch.empty(k, w, f, dtype=self._feat.dtype, device=self._feat.device)
        market = self._gather(t, market, torch.empty(k, w, dtype=torch.long, device=t.device))
        return Obs(market, position.reshape(-1, 1).to(self.position.dtype))

    def _restart_points(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) bars where an episode that ends at this step (from bars ``t``) starts its next one (used where done)."""
        return self._starts(self.n)

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue the same episodes (on the CPU)."""
        return {
            "t": self.t.cpu(),
            "steps": self.steps.cpu(),
            "position": self.position.cpu(),
            "equity": self.equity.cpu(),
            "generator": self.gen.get_state(),
        }

    def load_state_dict(self, saved: dict) -> None:
        if saved["t"].shape != self.t.shape:
            raise ValueError(f"the checkpoint has {saved['t'].numel()} envs, this env has {self.n}")
        for name in ("t", "steps", "position", "equity"):
            getattr(self, name).copy_(saved[name].to(self.t.device))
        self.gen.set_state(saved["generator"])
