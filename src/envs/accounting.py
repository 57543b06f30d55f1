"""The accounting of one env step as pure functions: what a book of weight ``p`` earns, pays and trades.

One step = the agent at the close of bar t chooses a target weight ``a``; the step realises bar t+1:

1. the held weight ``p`` earns ``pre`` (the gap from close t to the fill) and, held overnight, the bar's
   income: its dividend and the interest and fees of :mod:`src.data.costs` (with ``fill=close`` the new
   weight is the one held overnight and receives them instead); it drifts to ``w = p (1 + pre) / g1``;
2. at the fill (open of t+1 by default; close of t with ``fill=close``, an optimistic, labelled option) the
   book is rebalanced to ``a`` if ``|a - w| >= min_trade``; turnover ``|a - w|`` pays ``costs.rate``;
3. the new weight earns ``post`` to the close of t+1 and drifts again.

Equity growth over the step is ``(1 + p pre + i(p))(1 - turnover rate)(1 + a post)`` with
``i(w) = w dividend + financing(w)``; the reward is its log.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

EPS = 1e-12


class Scalars(NamedTuple):
    """The constants of :func:`account` as 0-d tensors on the env's device: an op between a tensor and a
    Python number first wraps the number into a tensor, which costs more than the op itself at N ~ 1000."""

    one: torch.Tensor
    zero: torch.Tensor
    eps: torch.Tensor
    rate: torch.Tensor  # cost per unit of turnover
    min_trade: torch.Tensor  # smallest rebalance (at least eps)
    cash: torch.Tensor  # annual rates (fractions): interest on cash, fee on shorts, interest on borrowed cash
    borrow: torch.Tensor
    margin: torch.Tensor
    close_fill: bool = False  # income goes to the weight bought at the close (fill=close), not the one held

    @classmethod
    def make(
        cls, rate: float, min_trade: float, device: torch.device | str = "cpu", costs=None, close_fill: bool = False
    ) -> Scalars:
        fin = (costs.cash_rate, costs.borrow_rate, costs.margin_rate) if costs is not None else (0.0, 0.0, 0.0)
        values = (1.0, 0.0, EPS, rate, max(min_trade, EPS), *fin)
        return cls(*(torch.tensor(v, dtype=torch.float32, device=device) for v in values), close_fill=close_fill)


def income(w: torch.Tensor, dividend: torch.Tensor, years: torch.Tensor, k: Scalars) -> tuple[torch.Tensor, ...]:
    """The dividend and the financing (interest and fees) that weight ``w`` earns over ``years``
    (:func:`src.data.costs.financing` is the same formula in numpy)."""
    fin = years * (
        k.cash * (k.one - w).clamp_min(0) - k.margin * (w - k.one).clamp_min(0) - k.borrow * (-w).clamp_min(0)
    )
    return w * dividend, fin


def account(
    p: torch.Tensor,
    pre: torch.Tensor,
    post: torch.Tensor,
    a: torch.Tensor,
    k: Scalars,
    dividend: torch.Tensor | None = None,
    years: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """One step's accounting for held weights ``p`` and target weights ``a`` (see the module docstring).

    ``dividend`` and ``years`` (the bar's dividend yield and accrual time) pay income to the weight held
    overnight; None: nothing is earned or paid for holding (the fast path).

    Returns ``(held, turnover, gross, growth, drifted_after, reward, dividend, financing)``: the weight after
    the fill, the turnover paid for, gross (income included) and net equity growth factors, the weight after
    the bar's drift (the next step's ``p``), the reward ``log(growth)``, and the dividend and financing as
    returns on the step's starting equity.
    """
    g1 = k.one + p * pre
    div1 = fin1 = div2 = fin2 = k.zero
    if dividend is not None and not k.close_fill:
        div1, fin1 = income(p, dividend, years, k)
        g1 = g1 + div1 + fin1
    drifted = torch.where(g1 > k.eps, p * (k.one + pre) / g1.clamp_min(k.eps), k.zero)
    turnover = (a - drifted).abs()
    trade = turnover >= k.min_trade
    held = torch.where(trade, a, drifted)
    turnover = torch.where(trade, turnover, k.zero)
    g2 = k.one + held * post
    if dividend is not None and k.close_fill:
        div2, fin2 = income(held, dividend, years, k)
        g2 = g2 + div2 + fin2
    gross = g1 * g2
    growth = (gross * (k.one - turnover * k.rate)).clamp_min(k.zero)
    after = torch.where(g2 > k.eps, held * (k.one + post) / g2.clamp_min(k.eps), k.zero)
    if dividend is None:
        return held, turnover, gross, growth, after, torch.log(growth.clamp_min(k.eps)), k.zero, k.zero
    if k.close_fill:  # as returns on the step's starting equity: income grows with the other segment's price
        div, fin = g1 * div2, g1 * fin2
    else:
        div, fin = div1 * g2, fin1 * g2
    return held, turnover, gross, growth, after, torch.log(growth.clamp_min(k.eps)), div, fin
