"""logger=csv|many|mlflow|wandb: every scalar, the resolved config, report.md and the equity figure reach each."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from src.core.errors import ConfigError
from src.train import main

SCALARS = ("val/sharpe", "train/reward_mean", "losses/policy_loss", "test/sharpe")


@pytest.mark.parametrize("choice", ["csv", "many"])
def test_loggers_get_every_scalar_and_the_config(tiny_cfg, choice):
    cfg = tiny_cfg(f"logger={choice}")
    main(cfg)
    run = Path(cfg.hydra.runtime.output_dir)
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    for col in SCALARS:
        assert col in metrics.columns and metrics[col].notna().any(), col
    hparams = (run / "csv" / "hparams.yaml").read_text()
    assert "cfg:" in hparams and "algo:" in hparams and "num_envs: 8" in hparams  # the resolved config
    for name in ("report.md", "equity.png", "config.yaml", "metrics.json"):
        assert (run / "csv" / name).read_bytes() == (run / name).read_bytes()  # beside metrics.csv
    tb = list((run / "tb").glob("events.out.tfevents.*"))
    assert bool(tb) == (choice == "many")  # many: TensorBoard as well
    if tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ev = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0, "images": 0}).Reload()
        assert "test/equity_curve" in ev.Tags()["images"]  # the equity figure
        (text,) = ev.Tensors("report/text_summary")  # report.md
        assert "buy-and-hold" in text.tensor_proto.string_val[0].decode()


def test_mlflow_run_reads_back(tiny_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_cfg("logger=mlflow", f"logger.tracking_uri={uri}", f"logger.artifact_location={tmp_path / 'mlruns'}")
    main(cfg)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    client = MlflowClient(tracking_uri=uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "tradelab_synthetic"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["run_dir"] == str(run_dir)
    for key in SCALARS:
        assert key in run.data.metrics, key
    history = client.get_metric_history(run.info.run_id, "val/sharpe")
    val = pd.read_csv(run_dir / "val_history.csv")
    assert sorted(round(m.value, 5) for m in history) == sorted(round(v, 5) for v in val.sharpe)  # every check
    assert run.data.params["cfg/algo/num_envs"] == "8" and run.data.params["cfg/env/name"] == "synthetic"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "equity.png", "config.yaml", "metrics.json"} <= names
    report = client.download_artifacts(run.info.run_id, "report.md", str(tmp_path))
    assert Path(report).read_text() == (run_dir / "report.md").read_text()


def test_wandb_offline_without_a_key(tiny_cfg, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")  # no `wandb login` entry either
    sent: set[str] = set()
    real = WandbLogger.log_metrics
    monkeypatch.setattr(
        WandbLogger, "log_metrics", lambda self, metrics, step=None: (sent.update(metrics), real(self, metrics, step))
    )
    cfg = tiny_cfg("logger=wandb")
    main(cfg)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")  # offline: kept for `wandb sync`, nothing uploaded
    files = offline / "files" / run_dir.name
    for name in ("report.md", "config.yaml", "metrics.json", "equity.png"):
        assert (files / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert set(SCALARS) <= sent  # every scalar reached the W&B logger ...
    (log,) = offline.glob("run-*.wandb")
    keys = (*SCALARS, "equity", "num_envs", "synthetic")  # ... and W&B's run log has it, the figure, the config
    deadline = time.monotonic() + 30  # W&B's service process may still be flushing the log after finish()
    while missing := [k for k in keys if k.encode() not in log.read_bytes()]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert missing == []


@pytest.mark.parametrize("extra", ["mlflow", "wandb"])
def test_missing_extra_is_one_line_naming_it(tiny_cfg, monkeypatch, extra):
    import importlib.util

    from src.core.utils import build

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == extra else real(name, *a))
    cfg = tiny_cfg(f"logger={extra}")
    with pytest.raises(
        ConfigError, match=rf'^logger={extra}: the {extra} package is not installed; pip install -e "\.\[{extra}\]"$'
    ):
        build(cfg.logger, _recursive_=False)
