"""Train an agent: ``python -m src.train [group=option ...] [key=value ...]``.

Builds the market and the LightningModule from the Hydra config, trains with
validation-based checkpoint selection, evaluates the selected checkpoint once
on the test split, and writes the run's reports beside its checkpoints and
TensorBoard logs. Returns the selected model's validation Sharpe (what a
sweeper optimises; never the test figure).

SIGINT/SIGTERM stop training after the current iteration with a fresh
``last.ckpt``; ``python -m src.train resume=<run dir>`` continues any
interrupted run (also one killed with SIGKILL) from its ``last.ckpt`` with the
configuration saved in that directory, reproducing the uninterrupted run.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from src.app.run import train, with_sweep_overrides
from src.core.errors import ConfigError

__all__ = ["main", "train"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    try:
        sys.argv = with_sweep_overrides(sys.argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    main()
