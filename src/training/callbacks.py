"""Lightning callbacks composed from ``conf/callbacks/``."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback, TQDMProgressBar


class IterationProgressBar(TQDMProgressBar):
    """Progress in PPO iterations (one rollout + update), not in gradient steps.

    Lightning counts one training batch per iteration but ``max_steps`` in
    gradient steps; this bar converts so the total is the real one.
    """

    @property
    def total_train_batches(self) -> int | float:
        ppo = self.trainer.lightning_module.ppo
        per_iter = ppo.update_epochs * ppo.num_minibatches
        steps = self.trainer.max_steps
        return math.ceil(steps / per_iter) if steps and steps > 0 else float("inf")

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class Interrupted(Exception):
    """Raised by :class:`GracefulInterrupt` once ``last.ckpt`` holds the interrupted state."""

    def __init__(self, signal_name: str, step: int, path: Path) -> None:
        super().__init__(f"{signal_name} at gradient step {step}; saved {path}")
        self.signal_name, self.step, self.path = signal_name, step, path


class GracefulInterrupt(Callback):
    """SIGINT / SIGTERM: finish the current PPO iteration (and its validation, if one is due), save
    ``last.ckpt`` and raise :class:`Interrupted`, which ``src.train`` turns into a clean exit.

    Stopping by exception rather than ``trainer.should_stop`` matters: Lightning validates once more
    when asked to stop, and that extra validation (and the checkpoints it triggers) would make the
    resumed run differ from an uninterrupted one. The handlers are installed when training starts
    (after Lightning's own) and restored when it ends. A second Ctrl-C stops at once
    (``KeyboardInterrupt``); ``last.ckpt`` is then the previous one, intact (atomic writes).
    """

    def __init__(self, last_path: str | Path) -> None:
        self.last_path = Path(last_path)
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{self.received} received: finishing this iteration, then saving {self.last_path}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is None:
            return
        loop = trainer.fit_loop.epoch_loop
        if loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return  # the uninterrupted run validates now: stop after that validation instead
        self._stop(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.received is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop(trainer)

    def _stop(self, trainer) -> None:
        trainer.save_checkpoint(self.last_path)
        self._restore()
        raise Interrupted(self.received, trainer.global_step, self.last_path)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ResourceMonitor(Callback):
    """Logs resident memory and wall-clock env-steps/s (validation included) each PPO iteration.

    With ``csv`` it also appends one row per iteration to that file (time, gradient and env
    steps, RSS): the soak test in ``experiments/reliability`` reads it.
    """

    def __init__(self, csv: str | None = None) -> None:
        self.csv = Path(csv) if csv else None
        self._t0: float | None = None
        self._last: tuple[float, int] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.monotonic()
        self._last = (self._t0, pl_module.env_steps)
        if self.csv is not None and not self.csv.exists():
            self.csv.parent.mkdir(parents=True, exist_ok=True)
            self.csv.write_text("seconds,gradient_steps,env_steps,rss_mb\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now, rss = time.monotonic(), rss_mb()
        t_last, s_last = self._last
        sps = (pl_module.env_steps - s_last) / max(now - t_last, 1e-9)
        self._last = (now, pl_module.env_steps)
        pl_module.log_dict({"charts/rss_mb": rss, "charts/wall_sps": sps}, on_step=True, on_epoch=False, batch_size=1)
        if self.csv is not None:
            with open(self.csv, "a") as f:
                f.write(f"{now - self._t0:.2f},{trainer.global_step},{pl_module.env_steps},{rss:.1f}\n")


class CurveFitEarlyStopping(Callback):
    """Stop a hopeless run early by extrapolating its learning curves (see :mod:`src.training.curve_fit`).

    At every validation from the ``min_points``-th on, fits a logarithmic growth to validation Sharpe and
    an exponential decay to validation loss against the fraction of the step budget done, and predicts
    both at the end of the budget. Stops when the predicted final Sharpe is below ``threshold`` *and*
    the best Sharpe is ``patience`` validations old: a run that is still improving is never stopped.
    Each decision is logged (``curve_fit/*``) and kept in :attr:`decisions` (saved in checkpoints).
    In an Optuna sweep (``src.core.sweeper``) the predicted Sharpe is reported to the trial at each step,
    and the run also stops when the study's pruner votes to prune it *and* it has stalled (the pruner
    compares trials; it does not override "never stop a run that is still improving").
    """

    def __init__(self, min_points: int = 5, patience: int = 3, threshold: float = 0.5, min_delta: float = 0.0) -> None:
        if min_points < 4 or patience < 1:
            raise ValueError(f"curve_fit_stop: min_points must be >= 4 and patience >= 1, got {min_points}, {patience}")
        self.min_points, self.patience, self.threshold, self.min_delta = min_points, patience, threshold, min_delta
        self.points: list[dict] = []  # step, sharpe, loss at each validation
        self.decisions: list[dict] = []
        self.stopped: dict | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.stopped is not None:
            return
        m = trainer.callback_metrics
        self.points.append(
            {"step": trainer.global_step, "sharpe": float(m["val/sharpe"]), "loss": float(m["val/value_loss"])}
        )
        if len(self.points) < self.min_points:
            return
        self._decide(trainer, pl_module)

    def _decide(self, trainer, pl_module) -> None:
        from src.core.sweeper import active_trial, mark_pruned
        from src.training.curve_fit import fit_curve, stalled

        budget = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else self.points[-1]["step"]
        t = np.array([p["step"] for p in self.points], dtype=np.float64) / budget
        sharpes = [p["sharpe"] for p in self.points]
        sf = fit_curve("log_growth", t, np.array(sharpes))
        lf = fit_curve("exp_decay", t, np.array([p["loss"] for p in self.points]))
        stall = stalled(sharpes, self.patience, self.min_delta)
        stop = sf.prediction < self.threshold and stall
        reason = f"predicted final Sharpe {sf.prediction:.3f} < {self.threshold} and no improvement in {self.patience}"
        pruned = prune_vote = False
        trial = active_trial()
        if trial is not None:
            trial.report(sf.prediction, trainer.global_step)
            prune_vote = bool(trial.should_prune())  # numpy bool from some pruners: not checkpoint-safe
            pruned = prune_vote and stall  # the pruner ranks trials; a still-improving run is never stopped
            if pruned:
                mark_pruned()
                stop, reason = (
                    True,
                    (
                        f"Optuna pruned the trial (predicted final Sharpe {sf.prediction:.3f} below the pruner's bar; "
                        f"no improvement in {self.patience})"
                    ),
                )
        d = {
            "step": trainer.global_step,
            "sharpe_fit": list(sf.params),
            "sharpe_fit_ok": sf.ok,
            "predicted_sharpe": sf.prediction,
            "loss_fit": list(lf.params),
            "loss_fit_ok": lf.ok,
            "predicted_loss": lf.prediction,
            "stalled": stall,
            "pruner_vote": prune_vote,
            "pruned": pruned,
            "stop": stop,
        }
        self.decisions.append(d)
        logs = {f"curve_fit/sharpe_{k}": v for k, v in zip("abc", sf.params, strict=True)}
        logs.update({f"curve_fit/loss_{k}": v for k, v in zip("abc", lf.params, strict=True)})
        for k in ("predicted_sharpe", "predicted_loss", "sharpe_fit_ok", "loss_fit_ok", "stalled", "stop"):
            logs[f"curve_fit/{k}"] = float(d[k])
        for logger in getattr(trainer, "loggers", []):  # not self.log(): Lightning forbids it in on_validation_end
            logger.log_metrics(logs, step=trainer.global_step)
        sp, lp = (", ".join(f"{x:.3g}" for x in f.params) for f in (sf, lf))
        print(
            f"curve fit at step {d['step']}: Sharpe a*log(1+b*t)+c fit ({sp}) predicts final Sharpe {sf.prediction:.3f}"
            f"{'' if sf.ok else ' (' + sf.message + ')'}; loss a*exp(-b*t)+c fit ({lp}) predicts {lf.prediction:.4g}; "
            f"{'stalled' if stall else 'improving'} -> {'STOP' if stop else 'continue'}",
            flush=True,
        )
        if stop:
            self.stopped = {"step": trainer.global_step, "reason": reason, "pruned": pruned}
            print(f"curve-fit early stopping at step {trainer.global_step}: {reason}", flush=True)
            trainer.should_stop = True

    report_key = "curve_fit_stop"

    def summary(self) -> dict:
        """What the run report lists: the stop (if any) and the last decision."""
        return {
            "stopped": self.stopped,
            "checks": len(self.decisions),
            "last": self.decisions[-1] if self.decisions else None,
        }

    def report_section(self) -> list[str]:
        """Markdown for the run's report.md: the last prediction and the stop, if any."""
        lines = ["## Curve-fit early stopping", ""]
        if not self.decisions:
            return [*lines, f"Fewer than {self.min_points} validations: no fit was made.", ""]
        d = self.decisions[-1]
        lines.append(
            f"{len(self.decisions)} fits; the last, at step {d['step']}, predicted a final Sharpe of "
            f"{d['predicted_sharpe']:.3f} (threshold {self.threshold:g})"
            f"{'' if d['sharpe_fit_ok'] else ' from the fallback (the fit failed)'}."
        )
        if self.stopped is not None:
            lines.append(f"Stopped at step {self.stopped['step']}: {self.stopped['reason']}.")
        else:
            lines.append("Not stopped.")
        return [*lines, ""]

    def state_dict(self) -> dict:
        return {"points": self.points, "decisions": self.decisions, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.points, self.decisions, self.stopped = state["points"], state["decisions"], state["stopped"]
