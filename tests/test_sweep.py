"""Optuna sweeps through the real CLI: pruning-aware sweeper, shared storage, trial table, from_sweep=."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from src.errors import ConfigError
from src.train import with_sweep_overrides
from tests.conftest import ROOT, TINY

# TINY with 6 PPO iterations, each validated: enough points for the curve fit (min_points 4) to report
SWEEP = [
    *[o for o in TINY if not o.startswith("trainer.max_steps")],
    "trainer.max_steps=24",
    "callbacks.curve_fit_stop.min_points=4",
    "hydra.sweeper.pruner.n_startup_trials=1",
]


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.train", "-m", "hparams_search=ppo_optuna", *SWEEP, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_optuna_sweep_shared_storage_and_from_sweep(tmp_path):
    optuna = pytest.importorskip("optuna")
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    a, b = tmp_path / "a", tmp_path / "b"
    common = [f"hydra.sweeper.storage={db}", "hydra.sweeper.study_name=t"]
    res = _sweep("hydra.sweeper.n_trials=3", f"hydra.sweep.dir={a}", *common)
    assert res.returncode == 0, res.stderr[-3000:]
    # a second process joins the same study through the storage (what several machines would do)
    res = _sweep("hydra.sweeper.n_trials=1", f"hydra.sweep.dir={b}", *common)
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="t", storage=db)
    assert len(study.trials) == 4
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert all(t.intermediate_values for t in study.trials)  # the curve fit reported to every trial

    trials = pd.read_csv(b / "trials.csv")
    assert len(trials) == 4 and {"trial", "state", "val_sharpe", "test_sharpe", "lr_scale", "optimizer"} <= set(trials)
    report = (b / "sweep_report.md").read_text()
    assert "Deflated" in report and "buy-and-hold" in report
    best = OmegaConf.load(b / "optimization_results.yaml")
    assert best.best_value == pytest.approx(study.best_value)
    overrides = list(OmegaConf.load(b / "best_overrides.yaml"))
    assert f"lr_scale={study.best_params['lr_scale']}" in overrides
    assert not any(o.startswith(("hparams_search", "callbacks.")) for o in overrides)  # a plain run, no sweep overlay
    assert "env=synthetic" in overrides  # the sweep's fixed overrides travel with the parameters

    # one flag starts a run from the best parameters; an explicit override still wins
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "src.train", f"from_sweep={b}", *TINY, "seed=3", f"hydra.run.dir={run}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = OmegaConf.load(run / "config.yaml")
    assert "curve_fit_stop" not in cfg.callbacks
    assert cfg.lr_scale == pytest.approx(study.best_params["lr_scale"]) and cfg.seed == 3
    assert cfg.algo.clip_coef == pytest.approx(study.best_params["algo.clip_coef"])


def test_with_sweep_overrides(tmp_path):
    (tmp_path / "best_overrides.yaml").write_text("- lr_scale=2.0\n- optimizer=muon\n- seed=5\n")
    argv = ["train.py", f"from_sweep={tmp_path}", "seed=1"]
    assert with_sweep_overrides(argv) == [
        "train.py",
        "lr_scale=2.0",
        "optimizer=muon",
        f"from_sweep={tmp_path}",
        "seed=1",
    ]
    assert with_sweep_overrides(["train.py", "seed=1"]) == ["train.py", "seed=1"]
    with pytest.raises(ConfigError, match="best_overrides.yaml"):
        with_sweep_overrides(["train.py", f"from_sweep={tmp_path / 'nope'}"])
