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
