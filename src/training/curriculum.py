"""Curriculum learning (``curriculum=linear|adaptive``): a difficulty in [0, 1] shapes training episodes.

Difficulty ``d`` sets, for *training* episodes only (validation and test always use the real
market, full costs and the whole split):

- episode length: ``min_length + d (full - min_length)`` bars, ``full`` the env's episode length;
- cost multiplier: ``min_cost + d (1 - min_cost)`` times the env's cost rate (``min_cost > 0``:
  costs are never switched off, only eased in);
- regimes: episodes start only from the calmest ``min_regimes + d (1 - min_regimes)`` of the
  training start bars, ranked by the realised volatility of the episode they begin (calm first).

Rules (:func:`linear_difficulty`, :func:`adaptive_step`, pure and tested):

- ``linear``: ``d`` rises from ``start`` to 1 over the first ``ramp`` fraction of the step budget.
- ``adaptive``: after each rollout the training Sharpe of the last ``window`` rollouts (per-bar
  net returns of every env, annualised) is checked; ``d`` goes up by ``step`` when it clears
  ``advance_at`` and down by ``step`` when it falls below ``retreat_at``, at most once per
  ``window`` rollouts.

The difficulty and its three effects are logged (``curriculum/*``) and saved in checkpoints.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from lightning.pytorch.callbacks import Callback

from src.core.errors import ConfigError


def linear_difficulty(step: int, total: int, ramp: float, start: float = 0.0) -> float:
    """``start`` at step 0, 1 from ``ramp * total`` steps on, linear between."""
    if ramp <= 0 or total <= 0:
        return 1.0
    return min(1.0, start + (1.0 - start) * step / (ramp * total))


def adaptive_step(difficulty: float, sharpe: float, advance_at: float, retreat_at: float, step: float) -> float:
    """The next difficulty: up by ``step`` above ``advance_at``, down below ``retreat_at``, clipped to [0, 1]."""
    if sharpe > advance_at:
        difficulty += step
    elif sharpe < retreat_at:
        difficulty -= step
    return min(1.0, max(0.0, difficulty))


def pooled_sharpe(stats: list[tuple[float, float, int]], bars_per_year: float) -> float:
    """Annualised Sharpe of the per-bar returns summarised as (sum, sum of squares, count) chunks."""
    s = sum(x[0] for x in stats)
    ss = sum(x[1] for x in stats)
    n = sum(x[2] for x in stats)
    if n < 2:
        return 0.0
    mean = s / n
    var = max(ss / n - mean * mean, 0.0) * n / (n - 1)
    return 0.0 if var <= 0 else mean / math.sqrt(var) * math.sqrt(bars_per_year)


class Curriculum(Callback):
    """See the module docstring. ``kind``: ``linear`` or ``adaptive``."""

    report_key = "curriculum"

    def __init__(
        self,
        kind: str = "linear",
        start: float = 0.0,
        min_length: int = 64,
        min_cost: float = 0.25,
        min_regimes: float = 0.3,
        ramp: float = 0.5,
        window: int = 4,
        advance_at: float = 0.5,
        retreat_at: float = -0.5,
        step: float = 0.1,
    ) -> None:
        if kind not in ("linear", "adaptive"):
            raise ConfigError(f"curriculum.kind must be linear or adaptive, got {kind!r}")
        if not 0.0 <= start <= 1.0:
            raise ConfigError(f"curriculum.start must be in [0, 1], got {start}")
        if not 0.0 < min_cost <= 1.0:
            raise ConfigError(f"curriculum.min_cost must be in (0, 1] (costs are never switched off), got {min_cost}")
        if not 0.0 < min_regimes <= 1.0:
            raise ConfigError(f"curriculum.min_regimes must be in (0, 1], got {min_regimes}")
        if min_length < 1 or window < 1 or step <= 0 or retreat_at >= advance_at:
            raise ConfigError(
                "curriculum: need min_length >= 1, window >= 1, step > 0 and retreat_at < advance_at, got "
                f"{min_length}, {window}, {step}, {retreat_at} / {advance_at}"
            )
        self.kind, self.start = kind, float(start)
        self.min_length, self.min_cost, self.min_regimes = int(min_length), float(min_cost), float(min_regimes)
        self.ramp, self.window, self.advance_at, self.retreat_at, self.step = ramp, window, advance_at, retreat_at, step
        self.difficulty = float(start)
        self.recent: deque[tuple[float, float, int]] = deque(maxlen=window)
        self.since_change = 0
        self.history: list[dict] = []  # every change: step, difficulty, training Sharpe
        self.order: torch.Tensor | None = None
        self._full_length = 0
        self._base_rate = 0.0

    # ---- what a difficulty means for the env ----
    def settings(self, d: float) -> dict:
        full = self._full_length
        return {
            "episode_length": max(1, round(min(self.min_length, full) + d * (full - min(self.min_length, full)))),
            "cost_multiplier": self.min_cost + d * (1.0 - self.min_cost),
            "regime_fraction": self.min_regimes + d * (1.0 - self.min_regimes),
        }

    def apply(self, pl_module) -> dict:
        env = pl_module.env
        s = self.settings(self.difficulty)
        if not getattr(pl_module, "grpo", False):  # GRPO's episodes are its groups' horizon
            env.max_len = s["episode_length"]
        env.rate = self._base_rate * s["cost_multiplier"]
        k = max(1, math.ceil(s["regime_fraction"] * len(self.order)))
        env.set_start_pool(None if k >= len(self.order) else self.order[:k])
        return s

    def on_train_start(self, trainer, pl_module) -> None:
        env = pl_module.env
        self._full_length, self._base_rate = env.max_len, pl_module.market.costs.rate
        self.order = env.regime_order()
        if self.kind == "linear":
            self.difficulty = linear_difficulty(trainer.global_step, trainer.max_steps, self.ramp, self.start)
        self.apply(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.kind == "linear":
            d = linear_difficulty(trainer.global_step, trainer.max_steps, self.ramp, self.start)
            if d != self.difficulty:
                self.difficulty = d
                self.apply(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        r = getattr(pl_module, "last_train_returns", None)
        if r is not None:
            r = r.double()
            total, squares = torch.stack([r.sum(), (r * r).sum()]).tolist()  # one host sync per rollout
            self.recent.append((total, squares, r.numel()))
        sharpe = pooled_sharpe(list(self.recent), pl_module.market.bars_per_year)
        self.since_change += 1
        if self.kind == "adaptive" and len(self.recent) == self.window and self.since_change >= self.window:
            d = adaptive_step(self.difficulty, sharpe, self.advance_at, self.retreat_at, self.step)
            if d != self.difficulty:
                self.history.append({"step": trainer.global_step, "from": self.difficulty, "to": d, "sharpe": sharpe})
                print(
                    f"curriculum at step {trainer.global_step}: training Sharpe {sharpe:.2f} -> "
                    f"difficulty {self.difficulty:.2f} -> {d:.2f}",
                    flush=True,
                )
                self.difficulty, self.since_change = d, 0
                self.apply(pl_module)
        s = self.settings(self.difficulty)
        logs = {"curriculum/difficulty": self.difficulty, "curriculum/train_sharpe": sharpe}
        logs.update({f"curriculum/{k}": float(v) for k, v in s.items()})
        for logger in getattr(trainer, "loggers", []):
            logger.log_metrics(logs, step=trainer.global_step)

    def summary(self) -> dict:
        return {"kind": self.kind, "final_difficulty": self.difficulty, "changes": self.history}

    def report_section(self) -> list[str]:
        s = self.settings(self.difficulty) if self._full_length else {}
        lines = ["## Curriculum", "", f"{self.kind}: final difficulty {self.difficulty:.2f}"]
        if s:
            lines[-1] += (
                f" (training episodes of {s['episode_length']} bars, costs x{s['cost_multiplier']:.2f}, "
                f"the calmest {100 * s['regime_fraction']:.0f}% of start bars)."
            )
        if self.history:
            lines += ["", "| step | difficulty | training Sharpe |", "|---:|---|---:|"]
            lines += [f"| {h['step']} | {h['from']:.2f} -> {h['to']:.2f} | {h['sharpe']:.2f} |" for h in self.history]
        return [*lines, ""]

    def state_dict(self) -> dict:
        return {
            "difficulty": self.difficulty,
            "recent": list(self.recent),
            "since_change": self.since_change,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.difficulty = float(state["difficulty"])
        self.recent = deque((tuple(x) for x in state["recent"]), maxlen=self.window)
        self.since_change, self.history = int(state["since_change"]), list(state["history"])
