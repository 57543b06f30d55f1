"""Callbacks that tests inject through the config (``+callbacks.x._target_=tests.helpers.X``) to break runs."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing of ours runs after it (not an Exception, so no handler catches it)."""


class BreakAt(Callback):
    """At the end of PPO iteration ``at`` (1-based) of a fresh run: send ``signal`` to this process, or with
    ``signal=KILL`` die at once."""

    def __init__(self, at: int, signal: str = "INT") -> None:
        self.at, self.signal, self.count = int(at), signal.upper(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.ckpt_path:  # the resumed run rebuilds this callback from the saved config: break only once
            return
        self.count += 1
        if self.count != self.at:
            return
        if self.signal == "KILL":
            raise Killed(f"simulated SIGKILL after iteration {self.at}")
        os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))


def run_killed_and_resumed(tmp_path, overrides: list[str], at: int = 5):
    """Train ``overrides`` uninterrupted (``full``) and killed after iteration ``at`` then resumed (``cut``).

    Returns the two run directories and the checkpoint the resume started from.
    """
    import pytest

    from src.core.checkpoint import load_checkpoint
    from src.train import train
    from tests.conftest import compose_cfg

    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir()
    cut.mkdir()
    train(compose_cfg(overrides, full))
    brk = ["+callbacks.brk._target_=tests.helpers.BreakAt", f"+callbacks.brk.at={at}", "+callbacks.brk.signal=KILL"]
    with pytest.raises(Killed):
        train(compose_cfg([*overrides, *brk], cut))
    saved = load_checkpoint(cut / "checkpoints" / "last.ckpt")
    train(compose_cfg([f"resume={cut}"], cut))
    return full, cut, saved


def outcome(run) -> tuple[str, str]:
    """What a resumed run must reproduce byte for byte: its metrics and its validation history."""
    return (run / "metrics.json").read_text(), (run / "val_history.csv").read_text()


class SaveWeights(Callback):
    """At the end of training, save this process's model weights and its env's current bars
    to ``<out>/rank<global rank>.pt``."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        state["env_t"] = pl_module.env.t.cpu().clone()
        torch.save(state, os.path.join(self.out, f"rank{trainer.global_rank}.pt"))


class RecordProcess(Callback):
    """When training starts, create ``<out>/pid<process id>``: which processes ran the trials of a multirun."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module) -> None:
        open(os.path.join(self.out, f"pid{os.getpid()}"), "w").close()


class FixPolicy(Callback):
    """Before validation check k (1-based), make the policy a constant target weight ``positions[k - 1]``:
    the actor's last layer gets zero weights and a bias whose Beta mean is that weight. Training goes on
    from there; the checkpoint written at that check holds exactly this policy."""

    def __init__(self, positions: list[float]) -> None:
        self.positions, self.count = [float(p) for p in positions], 0

    def on_validation_start(self, trainer, pl_module) -> None:
        import math

        import torch

        self.count += 1
        if trainer.state.fn != "fit" or self.count > len(self.positions):
            return
        x = (self.positions[self.count - 1] + 1) / 2  # the Beta mean alpha / (alpha + beta) in [0, 1]
        x = min(max(x, 0.01), 0.99)
        total = 40.0
        alpha, beta = 1 + (total - 2) * x, 1 + (total - 2) * (1 - x)  # both > 1, mean exactly x
        inv = lambda y: math.log(math.expm1(y)) - math.log(math.e - 1)  # softplus⁻¹ less the model's offset  # noqa: E731
        last = pl_module.model.actor[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor([inv(alpha - 1), inv(beta - 1)]))


# 6 PPO iterations of 4 gradient steps; validation (and last.ckpt) every 2 iterations.
LONGER = ["trainer.max_steps=24", "trainer.val_check_interval=2"]


def run_tiny(tmp_path, name: str, *extra: str, resume=None):
    """The tiny config (a little longer) trained in-process in ``tmp_path / name``, or ``resume`` continued."""
    from src.train import train
    from tests.conftest import TINY, compose_cfg

    run = resume or tmp_path / name
    run.mkdir(parents=True, exist_ok=True)
    overrides = [*TINY, *LONGER, *extra] if resume is None else [f"resume={run}"]
    return train(compose_cfg(overrides, run)), run


def run_outcome(run) -> tuple[dict, str]:
    """A finished run's metrics and validation history, to compare runs exactly."""
    import json

    return json.loads((run / "metrics.json").read_text()), (run / "val_history.csv").read_text()


def write_ticker_csv(path, n: int, seed: int, start: str) -> str:
    """A generated daily ticker of ``n`` bars from ``start``, written as a CSV; returns its path."""
    from src.data.synthetic import generate_bars

    df = generate_bars(n_bars=n, seed=seed, start=start)
    df.index = df.index.strftime("%Y-%m-%d")
    path.write_text(df.to_csv(index_label="timestamp"))
    return str(path)


def tensorboard_scalars(run) -> set[str]:
    """Every scalar tag TensorBoard holds under ``run``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for ev in run.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags
