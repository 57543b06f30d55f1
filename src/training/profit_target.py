"""``target=profitable``: keep training until validation is profitable, adjusting hyper-parameters when stuck.

The run stops as soon as one validation meets every target (Sharpe, total return, max drawdown over the
validation period; all configurable), saves that checkpoint as ``target.ckpt`` and the final test uses
it; otherwise it runs to its step budget and the usual best-Sharpe checkpoint is tested. When the best
validation Sharpe is ``patience`` validations old it adjusts, at most ``max_adjustments`` times, in this
order (the k-th adjustment):

- learning rate ×0.5 (odd k) or ×1.5 (even k), applied to the live optimizer and its schedule;
- entropy coefficient ×1.2 (more exploration);
- from k = 3 (after the second): PPO clip +0.05 (at most 0.4) and one more update epoch (at most 10);
- at k = 4 (after the third): curriculum and augmentation switched on in the live run, from the
  ``augmentation`` and ``curriculum`` configs given (``conf/target/profitable.yaml`` composes
  ``augmentation=all`` and ``curriculum=adaptive``). One that is already on is left as it is; the
  curriculum is run by this callback (its state is saved in this callback's state), the augmented
  env by the module (its config is saved in the module's checkpoint, so a resume rebuilds it).

Every adjustment is printed, logged (``target/*``), saved in checkpoints (and re-applied on resume)
and listed in the run's report. The validation period is used for every decision; the test period is
still evaluated once, at the end. Meeting the target on validation after many adjustments is itself a
selection effect: the report's deflated Sharpe ratio accounts for the number of validations.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from src.training.curve_fit import stalled


def _plain(node) -> dict | None:
    """A config node as a plain dict (Hydra passes DictConfig; tests pass dicts)."""
    if node is None:
        return None
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


class ProfitTarget(Callback):
    """See the module docstring."""

    report_key = "profit_target"

    def __init__(
        self,
        sharpe: float = 1.0,
        total_return: float = 0.05,
        max_drawdown: float = 0.20,
        patience: int = 5,
        max_adjustments: int = 4,
        min_delta: float = 0.0,
        dirpath: str | None = None,
        augmentation=None,
        curriculum=None,
    ) -> None:
        if patience < 1 or max_adjustments < 0:
            raise ValueError(
                f"target: patience must be >= 1 and max_adjustments >= 0, got {patience}, {max_adjustments}"
            )
        self.targets = {"sharpe": sharpe, "total_return": total_return, "max_drawdown": max_drawdown}
        self.patience, self.max_adjustments, self.min_delta = patience, max_adjustments, min_delta
        self.dirpath = Path(dirpath) if dirpath else None
        self.sharpes: list[float] = []
        self.since_adjust = 0  # validations since the last adjustment (patience restarts after one)
        self.adjustments: list[dict] = []
        self.reached: dict | None = None
        self.checkpoint: str | None = None
        self.augmentation = _plain(augmentation)
        self.curriculum_cfg = _plain(curriculum)
        self.curriculum = None  # the live curriculum once switched on
        self._curriculum_state: dict | None = None

    def met(self, m: dict) -> bool:
        t = self.targets
        return (
            m["sharpe"] > t["sharpe"]
            and m["total_return"] > t["total_return"]
            and m["max_drawdown"] < t["max_drawdown"]
        )

    def on_train_start(self, trainer, pl_module) -> None:
        if self.adjustments:  # resumed: the optimizer's lr came back with its state; the PPO settings did not
            last = self.adjustments[-1]
            pl_module.ppo.ent_coef, pl_module.ppo.clip_coef = last["ent_coef"], last["clip_coef"]
            pl_module.ppo.update_epochs = last["update_epochs"]
        if self._curriculum_state is not None:  # resumed after the curriculum was switched on
            self.curriculum = self._build_curriculum()
            self.curriculum.load_state_dict(self._curriculum_state)
            self.curriculum.on_train_start(trainer, pl_module)

    def _build_curriculum(self):
        from omegaconf import OmegaConf

        from src.core.utils import build

        return build(OmegaConf.create(self.curriculum_cfg))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.curriculum is not None:
            self.curriculum.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.curriculum is not None:
            self.curriculum.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.reached is not None:
            return
        m = pl_module.results["val"]["agent"].metrics
        self.sharpes.append(float(m["sharpe"]))
        self.since_adjust += 1
        self._log(trainer, {"target/met": float(self.met(m)), "target/adjustments": float(len(self.adjustments))})
        if self.met(m):
            self.reached = {
                "step": trainer.global_step,
                **{k: float(m[k]) for k in self.targets},
                "adjustments": len(self.adjustments),
            }
            dirpath = self.dirpath or Path(trainer.default_root_dir) / "checkpoints"
            self.checkpoint = str(dirpath / "target.ckpt")
            trainer.save_checkpoint(self.checkpoint)
            print(f"profitability target met at step {trainer.global_step} ({self._describe(m)}): stopping", flush=True)
            trainer.should_stop = True
            return
        recent = self.sharpes[-self.since_adjust :]
        if len(self.adjustments) < self.max_adjustments and stalled(recent, self.patience, self.min_delta):
            self._adjust(trainer, pl_module)

    def _describe(self, m: dict) -> str:
        return (
            f"Sharpe {m['sharpe']:.2f}, return {100 * m['total_return']:.1f}%, "
            f"max drawdown {100 * m['max_drawdown']:.1f}%"
        )

    def _adjust(self, trainer, pl_module) -> None:
        k = len(self.adjustments) + 1
        factor = 0.5 if k % 2 else 1.5
        opt = trainer.optimizers[0]
        for g in opt.param_groups:
            g["lr"] *= factor
        for cfg in trainer.lr_scheduler_configs:  # the schedule multiplies base_lrs: scale those too
            cfg.scheduler.base_lrs = [b * factor for b in cfg.scheduler.base_lrs]
        p = pl_module.ppo
        p.ent_coef *= 1.2
        changes = [f"lr x{factor}", "ent_coef x1.2"]
        if k >= 3:
            p.clip_coef = min(p.clip_coef + 0.05, 0.4)
            p.update_epochs = min(p.update_epochs + 1, 10)
            changes.append("clip +0.05, update_epochs +1")
        if k == 4:
            changes += self._switch_on(trainer, pl_module)
        a = {
            "adjustment": k,
            "step": trainer.global_step,
            "best_val_sharpe": max(self.sharpes),
            "lr_factor": factor,
            "lr": opt.param_groups[0]["lr"],
            "ent_coef": p.ent_coef,
            "clip_coef": p.clip_coef,
            "update_epochs": p.update_epochs,
            "changes": "; ".join(changes),
        }
        self.adjustments.append(a)
        self.since_adjust = 0
        self._log(trainer, {f"target/{n}": float(a[n]) for n in ("lr", "ent_coef", "clip_coef", "update_epochs")})
        print(
            f"no validation improvement in {self.patience} checks: adjustment {k} at step {a['step']}: {a['changes']}",
            flush=True,
        )

    @staticmethod
    def _log(trainer, metrics: dict) -> None:
        # straight to the logger: Lightning forbids self.log() in on_validation_end
        for logger in getattr(trainer, "loggers", []):
            logger.log_metrics(metrics, step=trainer.global_step)

    def summary(self) -> dict:
        """What the run report lists."""
        return {"targets": self.targets, "reached": self.reached, "adjustments": self.adjustments}

    def report_section(self) -> list[str]:
        """Markdown for the run's report.md: the targets, whether validation met them, every adjustment."""
        t = self.targets
        lines = [
            "## Profitability target",
            "",
            f"Targets on the validation period: Sharpe > {t['sharpe']:g}, total return > {100 * t['total_return']:g}%, "
            f"max drawdown < {100 * t['max_drawdown']:g}%.",
            "",
        ]
        if self.reached is not None:
            r = self.reached
            lines.append(
                f"Met at step {r['step']} after {r['adjustments']} adjustment(s) (Sharpe {r['sharpe']:.3f}, "
                f"return {100 * r['total_return']:.2f}%, max drawdown {100 * r['max_drawdown']:.2f}%); "
                "that checkpoint is the one tested."
            )
        else:
            lines.append("Not met within the step budget; the best-Sharpe validation checkpoint is the one tested.")
        lines += ["", f"Adjustments made: {len(self.adjustments)} of at most {self.max_adjustments}.", ""]
        if self.adjustments:
            lines += [
                "| # | step | best val Sharpe before | changes | lr after | ent_coef | clip | epochs |",
                "|---:|---:|---:|---|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {a['adjustment']} | {a['step']} | {a['best_val_sharpe']:.3f} | {a['changes']} | {a['lr']:.3g} | "
                f"{a['ent_coef']:.3g} | {a['clip_coef']:.2f} | {a['update_epochs']} |"
                for a in self.adjustments
            ]
            lines.append("")
        if self.curriculum is not None:  # switched on by the 4th adjustment
            lines += self.curriculum.report_section()
        return lines

    def _switch_on(self, trainer, pl_module) -> list[str]:
        """Augmentation first (it replaces the training env), then the curriculum, which shapes that env."""
        from src.training.curriculum import Curriculum

        if not self.curriculum_cfg:
            cur = "curriculum: none configured"
        elif any(isinstance(c, Curriculum) for c in trainer.callbacks):
            cur = "curriculum: already on"
        else:
            cur = None
        if not self.augmentation:
            aug = "augmentation: none configured"
        elif pl_module.switch_on_augmentation(self.augmentation):
            aug = f"augmentation on ({', '.join(self.augmentation.get('transforms', {}))})"
        else:
            aug = "augmentation: already on (or replay=her), unchanged"
        if cur is None:
            self.curriculum = self._build_curriculum()
            self.curriculum.on_train_start(trainer, pl_module)
            cur = f"curriculum {self.curriculum.kind} on"
        return [cur, aug]

    def state_dict(self) -> dict:
        return {
            "curriculum": None if self.curriculum is None else self.curriculum.state_dict(),
            "sharpes": self.sharpes,
            "since_adjust": self.since_adjust,
            "adjustments": self.adjustments,
            "reached": self.reached,
            "checkpoint": self.checkpoint,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sharpes, self.since_adjust = state["sharpes"], state["since_adjust"]
        self.adjustments, self.reached, self.checkpoint = state["adjustments"], state["reached"], state["checkpoint"]
        self._curriculum_state = state.get("curriculum")
