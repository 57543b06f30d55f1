"""The LightningModule's gradient steps and training log: the rule's loss (eager, compiled, or fused with its
gradients), the numerical-fault policy (a non-finite loss or gradient skips the step; too many in a row, or
non-finite weights, stop the run) and the per-iteration log. A mixin of :class:`src.training.module.PPOModule`, which
holds the state these methods read.
"""

from __future__ import annotations

import torch
from torch import nn

from src.core.errors import NumericalFault
from src.envs.market_env import Obs
from src.optim.clip import clip_grad_norm_, clipped
from src.rl.addons import Batch
from src.rl.rollout import Rollout


class StepHooks:
    """Gradient steps and fault handling of :class:`src.training.module.PPOModule`."""

    def _loss_eager(self, *tensors: torch.Tensor | Obs | None, params: dict | None = None):
        """The rule's loss on one minibatch (``compile=true`` runs this through torch.compile); ``params``: the
        model's parameters by name, to call it functionally (:meth:`_grads_eager`)."""
        return self.rule.loss(self.model, Batch(*tensors), params)

    def _across_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over DDP ranks (``x`` itself on one process): decisions every rank must share."""
        if self.trainer.world_size == 1:
            return x
        return self.trainer.strategy.reduce(x.detach().clone(), reduce_op="mean")

    def _trained_parameters(self) -> list[nn.Parameter]:
        if self._params is None:  # fixed once built (loading a checkpoint copies into the same tensors)
            extras = [w for a in self.addons for m in a.trained_modules() for w in m.parameters()]
            self._params = list(self.model.parameters()) + extras
        return self._params

    def _grads_eager(
        self, params: dict[str, torch.Tensor], *batch: torch.Tensor | Obs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """The minibatch loss, its terms, the gradients of ``params`` clipped to ``algo.max_grad_norm`` and their
        norm before clipping, as one pure function (``torch.func.grad``): with ``compile=true`` the forward, the
        backward and the clip become one graph, with no autograd engine, runtime wrappers or in-place clip between.
        """

        def loss_of(named: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple]:
            loss, terms = self._loss_eager(*batch, params=named)
            return loss, (loss, terms)

        grads, (loss, terms) = torch.func.grad(loss_of, has_aux=True)(params)
        return loss, terms, *clipped(list(grads.values()), self.ppo.max_grad_norm)

    def _fuses_update(self) -> bool:
        """``compile=true`` with no add-ons on one process: :meth:`_grads` gives the gradients. Add-ons add losses
        outside the rule's, and DDP all-reduces in backward: those take the compiled loss and autograd."""
        return self._grads is not None and not self.addons and self.trainer.world_size == 1

    def _named_parameters(self) -> dict[str, nn.Parameter]:
        """The model's parameters by name, in :meth:`_trained_parameters`' order (no add-ons: :meth:`_fuses_update`)."""
        if self._named is None:
            names = (n for n, _ in self.model.named_parameters())
            self._named = dict(zip(names, self._trained_parameters(), strict=True))
        return self._named

    def _step(
        self, loss: torch.Tensor, terms: dict, given: tuple[list[torch.Tensor], torch.Tensor] | None = None
    ) -> dict | None:
        """Backward, clip, step optimizer and schedule; a fault dict instead when anything is non-finite.
        ``given``: the clipped gradients and their norm before clipping, already computed (:meth:`_ppo_grads_eager`).
        """
        opt, sched = self.optimizers(), self.lr_schedulers()
        if given is None:
            grads = None
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            gnorm = clip_grad_norm_(self._trained_parameters(), self.ppo.max_grad_norm)
        else:
            grads, gnorm = given
        if not bool(torch.isfinite(loss) & torch.isfinite(gnorm)):  # one host sync per minibatch
            bad = first_nonfinite(("loss", loss), ("gradients", gnorm))
            opt.zero_grad(set_to_none=True)
            return {"fault": f"non-finite {bad} at gradient step {self.global_step}"}
        if grads is not None:
            for w, g in zip(self._trained_parameters(), grads, strict=True):
                w.grad = g
        opt.step()
        sched.step()
        terms["loss"], terms["grad_norm"] = loss, gnorm
        return None

    def _fault(self, what: str) -> None:
        """Skip this iteration's (remaining) update; stop after ``faults.max_consecutive`` in a row."""
        self.faults["consecutive"] += 1
        self.faults["total"] += 1
        self.log_dict(
            {
                "faults/skipped_updates": float(self.faults["total"]),
                "faults/consecutive": float(self.faults["consecutive"]),
            },
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        print(f"numerical fault: {what}; update skipped ({self.faults['consecutive']} in a row)", flush=True)
        if self.faults["consecutive"] >= self.max_faults:
            raise NumericalFault(
                f"stopping: {self.faults['consecutive']} consecutive numerical faults (faults.max_consecutive="
                f"{self.max_faults}); last: {what}"
            )

    def _check_weights(self, when: str) -> None:
        named = list(self.model.named_parameters())
        named += [
            (f"{type(a).__name__}.{n}", w)
            for a in self.addons
            for m in a.trained_modules()
            for n, w in m.named_parameters()
        ]
        ok = torch.stack([torch.isfinite(w).all() for _, w in named])
        if bool(ok.all()):  # one host sync
            return
        names = ", ".join(n for (n, _), good in zip(named, ok.tolist(), strict=True) if not good)
        raise NumericalFault(f"stopping: non-finite weights {when} at step {self.global_step} ({names})")

    def _log_train(self, b: Rollout, targets: Batch, stats, done_eq, rollout_s: float, update_s: float) -> None:
        groups = self.optimizers().param_groups
        logs = {(k if "/" in k else f"losses/{k}"): v for k, v in stats.items()}
        logs.update({f"charts/learning_rate_{g['optimizer']}": g["lr"] for g in groups if "optimizer" in g})
        logs.update(
            {
                "charts/learning_rate": groups[0]["lr"],
                "charts/env_steps": float(self.env_steps),
                "charts/sps": b.rewards.numel() / max(rollout_s + update_s, 1e-9),
                "charts/rollout_sps": b.rewards.numel() / max(rollout_s, 1e-9),
                "train/reward_mean": b.rewards.mean(),
                "train/position_abs_mean": _weights(b).abs().mean(),
                "train/turnover_mean": b.turnover.mean(),
            }
        )
        if done_eq is not None:
            logs["train/episode_return"] = (done_eq - 1).mean()
            logs["train/episode_final_equity"] = done_eq.mean()
        # under DDP each rank trained on its own episodes: logged figures are means over ranks
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=1, sync_dist=self.trainer.world_size > 1)
        self.log("sps", logs["charts/sps"], prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)
        tb = self._tb()
        if tb is not None and self.trainer.fit_loop.epoch_loop._batches_that_stepped % 10 == 0:
            tb.add_histogram("charts/positions", _weights(b).flatten(), self.global_step)
            tb.add_histogram("charts/advantages", targets.advantages, self.global_step)

    def _tb(self):
        from lightning.pytorch.loggers import TensorBoardLogger

        tb = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        return None if tb is None else tb.experiment


def first_nonfinite(*named: tuple[str, torch.Tensor]) -> str | None:
    """Name of the first tensor holding a NaN or inf, else None (one host sync in the common case)."""
    ok = torch.stack([torch.isfinite(x).all() for _, x in named])
    if bool(ok.all()):
        return None
    return next(name for (name, _), good in zip(named, ok.tolist(), strict=True) if not good)


def _weights(b) -> torch.Tensor:
    """What the rollout's books held: the target weights (one asset), or each portfolio's gross exposure (the sum
    of its absolute weights; its actions are points of the policy's simplex, not weights)."""
    return b.actions if b.actions.dim() == 2 else b.position.abs().sum(-1)
