"""Lightning callbacks composed from ``conf/callbacks/``."""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import TQDMProgressBar


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
