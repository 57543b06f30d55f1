"""logger=csv and logger=many: every scalar and the resolved config reach each logger."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from src.train import main


@pytest.mark.parametrize("choice", ["csv", "many"])
def test_loggers_get_every_scalar_and_the_config(tiny_cfg, choice):
    cfg = tiny_cfg(f"logger={choice}")
    main(cfg)
    run = Path(cfg.hydra.runtime.output_dir)
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    for col in ("val/sharpe", "train/reward_mean", "losses/policy_loss", "test/sharpe"):
        assert col in metrics.columns and metrics[col].notna().any(), col
    hparams = (run / "csv" / "hparams.yaml").read_text()
    assert "cfg:" in hparams and "algo:" in hparams and "num_envs: 8" in hparams  # the resolved config
    tb = list((run / "tb").glob("events.out.tfevents.*"))
    assert bool(tb) == (choice == "many")  # many: TensorBoard as well (the equity figure is drawn there)
