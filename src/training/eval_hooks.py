"""The LightningModule's evaluation: the deterministic policy, validation (selection), test (once).

A mixin of :class:`src.training.module.PPOModule`: validation walks the validation split deterministically and
records every check in ``val_history.csv`` (the selection's candidates); test walks the validation and
test splits once, with the selected weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from src.evaluation.walk import EvalResult, ModelPolicy, evaluate_split
from src.rl.gae import discounted_returns


class EvaluationHooks:
    """Validation and test steps of :class:`src.training.module.PPOModule` (which holds the state they read)."""

    def policy(self, values: list[torch.Tensor] | None = None) -> ModelPolicy:
        """The deterministic evaluation policy; goal-conditioned agents get ``replay.eval_goal``."""
        goals = next((g for a in self.addons if (g := a.evaluation_tracker(self)) is not None), None)
        return ModelPolicy(self.model, values, goals)

    def _evaluate(self, split: str, values: list[torch.Tensor] | None = None) -> dict[str, EvalResult]:
        self.model.eval()
        res = evaluate_split(self.market, split, self.policy(values))
        self.results[split] = res
        return res

    def validation_step(self, batch, batch_idx: int) -> None:
        self._check_weights("before validation")
        values: list[torch.Tensor] = []
        res = self._evaluate("val", values)
        self._log_eval("val", res)
        vloss = self._value_loss(values, res["agent"].ledger["net_return"])
        self.log("val/value_loss", vloss, batch_size=1)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:  # a sanity check selects nothing
            self._record_val_history(res["agent"].metrics, vloss)

    def _value_loss(self, values: list[torch.Tensor], net_returns) -> float:
        """Validation loss: the critic's squared error (in return units) against the discounted return actually
        earned along the deterministic validation path (the last value bootstraps). NaN where the critic learns
        something else: no critic (GRPO), or rewards an add-on changed (curiosity bonus, HER goal rewards)."""
        if not self.rule.has_critic or any(a.changes_rewards for a in self.addons):
            return float("nan")
        v = self.rule.raw_values(torch.stack(values)).double().cpu()
        r = torch.log1p(torch.tensor(net_returns.to_numpy(), dtype=torch.float64)) * self.ppo.reward_scale
        g = discounted_returns(r, self.ppo.gamma, bootstrap=v[-1])
        return float(((v - g) ** 2).mean())

    def _record_val_history(self, m: dict, value_loss: float) -> None:
        """``val_history.csv`` in the run directory: one row per validation, for learning curves."""
        from src.core.files import atomic_write

        self.val_history.append(
            {
                "gradient_steps": self.global_step,
                "env_steps": self.env_steps,
                **{k: m[k] for k in ("sharpe", "total_return", "max_drawdown", "exposure")},
                "value_loss": value_loss,
            }
        )
        if self.trainer.is_global_zero:
            rows = [",".join(self.val_history[0])] + [
                ",".join(f"{v:.10g}" for v in r.values()) for r in self.val_history
            ]
            atomic_write(Path(self.trainer.default_root_dir) / "val_history.csv", "\n".join(rows) + "\n")

    def test_step(self, batch, batch_idx: int) -> None:
        self._log_eval("best_val", self._evaluate("val"))  # the selected model's validation figures
        self._log_eval("test", self._evaluate("test"))  # evaluated once, after selection

    def _log_eval(self, prefix: str, res: dict[str, EvalResult]) -> None:
        members = {n: r.metrics["sharpe"] for n, r in res.items() if n.startswith("member_")}
        if members:  # each member alone beside the ensemble
            self.log_dict({f"{prefix}/{n}_sharpe": float(v) for n, v in members.items()}, batch_size=1)
        m = res["agent"].metrics
        keys = ("total_return", "max_drawdown", "win_rate", "trades", "final_equity", "sortino", "turnover")
        self.log_dict({f"{prefix}/{k}": float(m[k]) for k in keys}, batch_size=1, prog_bar=False)
        self.log(f"{prefix}/sharpe", float(m["sharpe"]), batch_size=1, prog_bar=True)
        self.log(f"{prefix}/bh_sharpe", float(res["buy_and_hold"].metrics["sharpe"]), batch_size=1)
        tb = self._tb()
        if tb is not None:
            from src.reports.run import equity_figure

            tb.add_figure(
                f"{prefix}/equity_curve", equity_figure(res, f"{self.market.name} {prefix}"), self.global_step
            )
