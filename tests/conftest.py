"""Shared fixtures: the real ``conf/`` composed and shrunk, small markets, CSV writers."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from src.data.synthetic import generate_bars

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one torch thread each
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A run small enough for seconds on CPU: 2 PPO iterations of 8 envs x 32 steps.
TINY = [
    "env=synthetic",
    "env.n_bars=400",
    "env.window=8",
    "env.episode_length=32",
    "env.min_trade=0",
    "model.d_model=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.d_ff=32",
    "model.head_hidden=16",
    "algo.num_envs=8",
    "algo.rollout_steps=32",
    "algo.update_epochs=2",
    "algo.num_minibatches=2",
    "trainer.max_steps=8",
    "trainer.val_check_interval=1",
    "trainer.enable_progress_bar=false",
]


def compose_cfg(overrides: list[str], run_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose the real config with ``overrides`` and point the run directory at ``run_dir``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*extra: str, run_dir: Path | None = None) -> DictConfig:
        d = run_dir or tmp_path / "run"
        d.mkdir(parents=True, exist_ok=True)
        return compose_cfg([*TINY, *extra], d)

    return make


@pytest.fixture
def bars() -> pd.DataFrame:
    return generate_bars(n_bars=300, seed=1)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def csv_text(bars) -> str:
    """A valid CSV of 300 daily bars in the shipped format."""
    df = bars.copy()
    df.index = df.index.strftime("%Y-%m-%d")
    return df.to_csv(index_label="timestamp")


def write_bars(path, df) -> str:
    """Bars to a daily CSV in the shipped format."""
    out = df.copy()
    out.index = out.index.strftime("%Y-%m-%d")
    path.write_text(out.to_csv(index_label="timestamp"))
    return str(path)


@pytest.fixture(scope="session")
def trained_agent(tmp_path_factory):
    """A tiny agent trained on abc_daily.csv (400 bars): the folder, the file, its bars, the checkpoint, and the
    same history with 60 bars more (what the file would have gained since)."""
    from src.train import main as train

    d = tmp_path_factory.mktemp("agent")
    full = generate_bars(n_bars=460, seed=3)
    bars = full.iloc[:400]
    csv = write_bars(d / "abc_daily.csv", bars)
    run = d / "run"
    run.mkdir()
    small = [o for o in TINY if not o.startswith("env")] + ["env.window=8", "env.episode_length=32"]
    train(compose_cfg([*small, "env=csv", f"env.path={csv}", "env.min_trade=0.0001"], run))
    return d, csv, bars, str(run / "checkpoints" / "best.ckpt"), full
