"""A trading env vectorised in torch: N episodes advance together as tensors.

One step = the agent at the close of bar t chooses a target weight within ``env.position_limits``; the
step realises bar t+1 with the accounting of :mod:`src.envs.accounting` (fills, trading costs on the
turnover, drift, dividends and financing on the weight held overnight). The reward is the log of the
step's equity growth, net of all of it. Gross (price) return, dividend, financing, cost, turnover and
equity are reported separately in ``info`` (net = gross + dividend + financing - cost, exactly), with
``risk_free``, what cash earned over the step (the excess-return benchmark). An episode is *terminated*
when equity falls to ``min_equity`` (bankruptcy: no bootstrap) and *truncated* at its time limit or the
end of the split (bootstrap from the final observation).
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

from src.core.utils import compile_static
from src.data.market import Market
from src.envs.accounting import EPS, Scalars, account, income

__all__ = ["EPS", "MarketEnv", "Obs", "Scalars", "Transition", "account", "all_windows", "income", "transition"]
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
    member: torch.Tensor | None = None  # (N,) long: the ensemble member acting in each episode (training)


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
    gross_return: torch.Tensor  # the price return of the weights held (income excluded)
    cost: torch.Tensor  # trading costs: gross - net growth
    net_return: torch.Tensor  # net growth - 1 = gross_return + dividend + financing - cost
    final_equity: torch.Tensor  # equity at the end of the step (before any restart)
    final_t: torch.Tensor  # the bar the step reached (before any restart)
    final_position: torch.Tensor  # the weight after the bar's drift (before any restart)
    dividend: torch.Tensor  # dividends received (paid, short), as a return
    financing: torch.Tensor  # interest earned less interest and fees paid, as a return
    risk_free: torch.Tensor  # what cash earned over the step: the excess-return benchmark


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
    carry: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Transition:
    """One env step for N envs as a pure function (see the module docstring); ``restart`` (N,) holds the
    bars where an episode that ends now starts its next one (None: no auto-reset); ``carry`` the per-bar
    dividend yields and accrual years (None: holding earns and costs nothing).

    Bankruptcy (equity at or below ``min_equity``) terminates; ``max_len`` steps or reaching ``stop`` truncates.
    """
    a = action.clamp(limits[0], limits[1])
    nxt = t + 1
    div_t, years = (carry[0][nxt], carry[1][nxt]) if carry is not None else (None, None)
    held, turnover, gross, growth, pos, reward, div, fin = account(position, pre[nxt], post[nxt], a, k, div_t, years)
    # what cash earned, rounded as a flat book's growth is (so a flat book's excess return is exactly 0)
    rf = (k.one + years * k.cash) - k.one if years is not None else k.zero
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
        held, turnover, gross - k.one - div - fin, gross - growth, growth - k.one, final_equity, nxt, pos,
        div, fin, rf,
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
        limits: per-env (N,) lower and upper bounds of the target weight instead of
            ``market.position_limits`` (the evaluation's baselines are not bound by the agent's limits).
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
        limits: tuple[torch.Tensor, torch.Tensor] | None = None,
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
        # dividend yields and accrual years, when holding earns or costs anything (else the fast path)
        self._carry = (market.dividend, market.accrual) if market.has_income else None
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
        if limits is None:
            self._limits = tuple(torch.tensor(float(x), device=dev) for x in market.position_limits)
        else:
            self._limits = tuple(torch.as_tensor(x, dtype=torch.float32, device=dev).reshape(num_envs) for x in limits)
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
        self._k = Scalars.make(self._rate, self.m.min_trade, self.m.device, self.m.costs, self.m.fill == "close")

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
        args += (self._restart_points(self.t) if self.auto_reset else None, self._carry)
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
            "dividend": tr.dividend.expand_as(tr.net_return),  # 0-d zeros on the fast path
            "financing": tr.financing.expand_as(tr.net_return),
            "risk_free": tr.risk_free.expand_as(tr.net_return),
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
