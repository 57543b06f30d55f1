"""A portfolio env vectorised in torch: N episodes, each holding weights over K assets and cash.

One step = at the close of bar t the agent chooses target weights; the step realises bar t+1 with
:func:`portfolio_account`, the single-asset accounting of :mod:`src.envs.accounting` summed over assets:

1. the held weights ``p`` (K,) earn the gap to the open, ``pre``, and the income of holding overnight: each
   asset's dividend (shorts pay it); the cash left after paying for the longs, ``1 - sum p+``, earns the cash rate
   and, when negative (borrowed), pays the margin rate; short-sale proceeds are collateral: they earn the cash rate
   (a rebate) but do not pay for longs, and each short pays its asset's borrow fee. With one asset this is the
   single-asset env's ``cash (1 - w)+ - margin (w - 1)+ - borrow (-w)+``. The weights drift to
   ``w = p (1 + pre) / g1``;
2. at the open of t+1 the book is rebalanced to the target ``a`` when the turnover ``sum |a - w|`` reaches
   ``min_trade`` (one no-trade band for the whole book, so a partial rebalance cannot break the limits) or when
   the drifted book has left the limits; asset k's turnover pays its own rate. Convention (as the single-asset
   env's): the cost is charged on the turnover in weights of the equity before the trade, and the targets are
   weights of the equity after it (a shares-and-cash ledger with the same convention gives the same equity: a
   test holds them equal);
3. the new weights earn ``post`` to the close and drift again.

Growth is ``g1 (1 - sum_k rate_k |a_k - w_k|) (1 + a post)``; the reward is its log. With K = 1 this is
:func:`src.envs.accounting.account` with ``fill=open`` (a test holds them equal).

Actions: the policy acts on a simplex (:class:`src.models.portfolio.PortfolioActorCritic`); :meth:`to_weights`
maps a point of it to weights: ``long_only``, K assets + cash (weights >= 0, sum <= 1); ``long_short``, K long
legs, K short legs and cash, weight ``gross * (long - short)`` (so the sum of |weights| is at most ``gross``).
Target weights given directly (:meth:`step_weights`, the baselines) are projected onto the limits.
"""

from __future__ import annotations

import torch

from src.data.portfolio import PortfolioMarket
from src.envs.accounting import EPS
from src.envs.market_env import Obs


def portfolio_account(p, pre, post, a, rate, min_trade, dividend, years, cash, margin, borrow, outside=None, hold=None):
    """One step's accounting of held weights ``p`` (N, K) to targets ``a`` (N, K) (see the module docstring).

    ``rate``, ``borrow``: (K,) per asset; ``cash``, ``margin``: annual rates; ``dividend`` (N, K) and ``years``
    (N,) the bar's income terms; ``outside``: drifted weights (N, K) -> (N,) bool, where the drift has left the
    limits (rebalanced whatever the band); ``hold`` (N,) bool: these books do not trade (the baselines' drift).
    Returns ``(held, turnover, cost, gross, growth, after, dividend, financing)``: weights after the fill, the
    turnover and cost paid (fractions of equity before the fill), gross and net growth factors, the weights after
    the bar's drift, and the dividend and financing as returns on the step's starting equity.
    """
    longs, shorts = p.clamp_min(0), (-p).clamp_min(0)
    c = 1 - longs.sum(-1)  # cash paid for the longs (negative: borrowed, at the margin rate)
    div1 = (p * dividend).sum(-1)
    fin1 = years * (cash * (c.clamp_min(0) + shorts.sum(-1)) - margin * (-c).clamp_min(0) - (borrow * shorts).sum(-1))
    g1 = 1 + (p * pre).sum(-1) + div1 + fin1
    drifted = torch.where(g1[:, None] > EPS, p * (1 + pre) / g1.clamp_min(EPS)[:, None], torch.zeros_like(p))
    diff = (a - drifted).abs()
    trade = diff.sum(-1) >= max(min_trade, EPS)
    if hold is not None:
        trade = trade & ~hold
    if outside is not None:
        trade = trade | outside(drifted)
    held = torch.where(trade[:, None], a, drifted)
    diff = diff * trade[:, None]
    cost = (diff * rate).sum(-1)
    g2 = 1 + (held * post).sum(-1)
    gross = g1 * g2
    growth = (gross * (1 - cost)).clamp_min(0)
    after = torch.where(g2[:, None] > EPS, held * (1 + post) / g2.clamp_min(EPS)[:, None], torch.zeros_like(p))
    return held, diff.sum(-1), cost, gross, growth, after, div1 * g2, fin1 * g2


def project(w: torch.Tensor, mode: str, gross: float) -> torch.Tensor:
    """Target weights onto the limits: long-only clips at 0 and scales a sum above 1 down to 1; long/short
    scales a sum of |weights| above ``gross`` down to ``gross``."""
    if mode == "long_only":
        w = w.clamp_min(0)
        return w / w.sum(-1, keepdim=True).clamp_min(1.0)
    return w / (w.abs().sum(-1, keepdim=True) / gross).clamp_min(1.0)


def within_limits(w: torch.Tensor, mode: str, gross: float, tol: float = 1e-5) -> torch.Tensor:
    """(N,) whether weights ``w`` (N, K) are inside the limits (to ``tol``)."""
    if mode == "long_only":
        return (w >= -tol).all(-1) & (w.sum(-1) <= 1 + tol)
    return w.abs().sum(-1) <= gross + tol


class PortfolioEnv:
    """N parallel episodes over one split of a :class:`PortfolioMarket` (the interface of
    :class:`src.envs.market_env.MarketEnv`: ``reset``, ``step``, ``observe``, ``state_dict``).

    Observations: ``Obs.market`` (N, K, window, F), every asset's last ``window`` feature rows; ``Obs.position``
    (N, K), the current (drifted) weights.
    """

    def __init__(self, market: PortfolioMarket, split: str, num_envs: int, random_start: bool = True,
                 generator: torch.Generator | None = None, auto_reset: bool | None = None,
                 episode_length: int | None = None) -> None:  # fmt: skip
        if num_envs <= 0:
            raise ValueError(f"num_envs must be > 0, got {num_envs}")
        self.m, self.split, self.n, self.random_start = market, split, num_envs, random_start
        self.auto_reset = random_start if auto_reset is None else auto_reset
        self.first, self.last = market.decision_range(split)
        length = market.episode_length if episode_length is None else episode_length
        self.max_len = length if random_start else self.last - self.first + 1
        self.gen = generator
        dev, k = market.device, market.num_assets
        self.t = torch.full((num_envs,), self.first, dtype=torch.long, device=dev)
        self.steps = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self.position = torch.zeros(num_envs, k, device=dev)
        self.equity = torch.ones(num_envs, device=dev)
        self._offsets = torch.arange(-market.window + 1, 1, device=dev)
        self.obs_shape = (k, market.window, market.num_features)
        self.position_dim = k
        self.action_shape = (market.action_dim,)
        self.group_size, self.start_pool = 1, None

    def to_weights(self, action: torch.Tensor) -> torch.Tensor:
        """Target weights (N, K) from points of the policy's simplex (N, action_dim) (see the module docstring)."""
        k = self.m.num_assets
        if self.m.mode == "long_only":
            return action[:, :k]
        return self.m.gross * (action[:, :k] - action[:, k : 2 * k])

    def _starts(self, n: int) -> torch.Tensor:
        if not self.random_start:
            return torch.full((n,), self.first, dtype=torch.long, device=self.t.device)
        hi = max(self.first, self.last - self.max_len + 1)  # prefer full-length episodes
        return torch.randint(self.first, hi + 1, (n,), generator=self.gen, device=self.t.device)

    def observe(self, t: torch.Tensor, position: torch.Tensor) -> Obs:
        """The observation at bars ``t`` (N,) with weights ``position`` (N, K)."""
        rows = self.m.features[t.reshape(-1)[:, None] + self._offsets]  # (N, window, K, F)
        return Obs(rows.transpose(1, 2).contiguous(), position.reshape(len(rows), -1).to(self.position.dtype))

    def reset(self) -> Obs:
        self.t = self._starts(self.n)
        self.steps.zero_()
        self.position.zero_()
        self.equity.fill_(1.0)
        return self.observe(self.t, self.position)

    def step(self, action: torch.Tensor):
        """Advance every episode one bar with the policy's ``action`` (N, action_dim); see :meth:`step_weights`."""
        return self.step_weights(self.to_weights(action.detach().reshape(self.n, -1).to(self.position.dtype)))

    def step_weights(self, target: torch.Tensor, bound: bool | torch.Tensor = True, hold: torch.Tensor | None = None):
        """Advance every episode one bar towards target weights (N, K), projected onto the limits where ``bound``
        (a bool, or (N,) per episode; elsewhere taken as given and never forced back: the evaluation's baselines
        are not bound by the agent's limits); ``hold`` (N,) bool: these episodes keep their drifted weights this
        bar (``target`` ignored) unless drift took a bound book out of its limits.

        Returns obs, reward (log growth net of costs), terminated, truncated, info (as :class:`MarketEnv`;
        ``position`` is the (N, K) weights after the fill, ``exposure`` the sum of their absolute values).
        """
        m = self.m
        bound = torch.as_tensor(bound, device=target.device).expand(self.n)
        a = torch.where(bound[:, None], project(target, m.mode, m.gross), target)
        nxt = self.t + 1
        years = m.accrual[nxt]
        held, turnover, _, gross, growth, after, div, fin = portfolio_account(
            self.position, m.pre[nxt], m.post[nxt], a, m.rate, m.min_trade, m.dividend[nxt], years,
            m.cash_rate, m.margin_rate, m.borrow, lambda w: bound & ~within_limits(w, m.mode, m.gross), hold,
        )  # fmt: skip
        reward = torch.log(growth.clamp_min(EPS))
        final_equity = self.equity * growth
        self.steps = self.steps + 1
        terminated = final_equity <= m.min_equity
        truncated = ~terminated & ((self.steps >= self.max_len) | (nxt >= self.last + 1))
        info = {
            "t": nxt, "final_t": nxt, "position": held, "exposure": held.abs().sum(-1), "turnover": turnover,
            "cost": gross - growth, "gross_return": gross - 1 - div - fin, "dividend": div, "financing": fin,
            "net_return": growth - 1, "risk_free": (1 + years * m.cash_rate) - 1, "equity": final_equity,
            "final_position": after,
        }  # fmt: skip
        self.t, self.position, self.equity = nxt, after, final_equity
        if self.auto_reset:
            done = terminated | truncated
            self.t = torch.where(done, self._starts(self.n), self.t)
            self.steps = self.steps.masked_fill(done, 0)
            self.position = self.position.masked_fill(done[:, None], 0.0)
            self.equity = self.equity.masked_fill(done, 1.0)
        return self.observe(self.t, self.position), reward, terminated, truncated, info

    def state_dict(self) -> dict:
        return {"t": self.t.cpu(), "steps": self.steps.cpu(), "position": self.position.cpu(),
                "equity": self.equity.cpu(), "generator": self.gen.get_state()}  # fmt: skip

    def load_state_dict(self, saved: dict) -> None:
        if saved["position"].shape != self.position.shape:
            raise ValueError(f"the checkpoint's env holds {tuple(saved['position'].shape)} weights, this env "
                             f"{tuple(self.position.shape)}")  # fmt: skip
        for name in ("t", "steps", "position", "equity"):
            setattr(self, name, saved[name].to(self.t.device).clone())
        self.gen.set_state(saved["generator"])
