"""The broker interface a paper (or, one day, live) account trades through, and its simulated implementation.

A broker turns a decision (a target weight, taken at the close of bar t) into what happened over bar t+1: the
fill, its costs, what holding earned and paid, and the book's equity. :class:`SimulatedBroker` fills at the next
open (or at the decision bar's close, with ``fill=close``) with the env's own accounting
(:func:`src.envs.accounting.account`): the same costs, no-trade band, financing and dividends as every backtest, so
a paper account and ``src.evaluate`` over the same bars cannot differ.

A real adapter implements :class:`Broker`: ``execute`` must place the order for the target weight at the next
open, wait for it, and return the realised :class:`Fill` (its actual price, quantity, fees, and the account's
financing and dividends since the last bar, as returns on the starting equity). Keeping the ledger is not the
broker's job: :mod:`src.paper` writes what ``execute`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from src.envs.accounting import Scalars, account


@dataclass
class Fill:
    """What bar t+1 did to a book that decided ``target`` at the close of bar t (returns on the equity at t)."""

    target: float  # the decision
    position: float  # the weight after the fill (the decision, or the drifted weight inside the no-trade band)
    turnover: float
    cost: float
    gross_return: float
    dividend: float
    financing: float
    net_return: float
    risk_free: float  # what cash earned over the bar
    drifted: float  # the weight after the bar's drift: the next decision's current weight


class Broker(Protocol):
    def execute(self, held: float, target: float, bar: int) -> Fill:
        """Trade a book holding weight ``held`` (at the close of bar ``bar - 1``) towards ``target``; report
        bar ``bar``."""


class SimulatedBroker:
    """Fills through the env's accounting on the bars' own returns (``series``: :func:`src.data.market.bar_series`)."""

    def __init__(self, series: tuple, costs, min_trade: float, fill: str = "open", limits=(-1.0, 1.0)) -> None:
        self.pre, self.post, self.dividend, self.accrual = (torch.as_tensor(x, dtype=torch.float32) for x in series)
        self.k = Scalars.make(costs.rate, min_trade, "cpu", costs, fill == "close")
        self.cash_rate = float(costs.cash_rate)
        self.limits = limits

    def execute(self, held: float, target: float, bar: int) -> Fill:
        a = min(max(target, self.limits[0]), self.limits[1])
        one = lambda x: torch.tensor([x], dtype=torch.float32)  # noqa: E731
        years = self.accrual[bar : bar + 1]
        pos, turnover, gross, growth, drifted, _, div, fin = account(
            one(held), self.pre[bar : bar + 1], self.post[bar : bar + 1], one(a), self.k,
            self.dividend[bar : bar + 1], years,
        )  # fmt: skip
        rf = (self.k.one + years * self.k.cash) - self.k.one
        div, fin = div.expand_as(growth), fin.expand_as(growth)
        parts = (pos, turnover, gross - growth, gross - 1 - div - fin, div, fin, growth - 1, rf, drifted)
        return Fill(float(a), *(float(x) for x in parts))
