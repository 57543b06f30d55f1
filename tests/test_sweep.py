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
    cols = {"trial", "state", "val_sharpe", "val_checks", "curve_fit_prediction", "lr_scale", "optimizer"}
    assert len(trials) == 4 and cols <= set(trials)
    assert "test_sharpe" not in trials  # only the selected trial's test period is reported (sweep_report.md)
    for row in trials.itertuples():
        # every validation column is measured: the trial's best validation check, whatever the curve fit predicted
        hist = pd.read_csv(f"{row.run_dir}/val_history.csv")
        assert row.val_checks == len(hist)
        assert row.val_sharpe == pytest.approx(hist["sharpe"].max(), abs=1e-5)
    assert all(t.user_attrs["val_sharpe"] == pytest.approx(trials.set_index("trial").val_sharpe[t.number], abs=1e-5)
               for t in study.trials)  # fmt: skip
    report = (b / "sweep_report.md").read_text()
    assert "Deflated" in report and "buy-and-hold" in report
    assert "over 4 trials" in " ".join(report.split())
    assert "effective trials" in report
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


def _fake_run(d, sharpes: list[float], seed: int):
    import json

    import numpy as np

    d.mkdir()
    pd.DataFrame({"gradient_steps": range(len(sharpes)), "sharpe": sharpes}).to_csv(d / "val_history.csv", index=False)
    r = np.random.default_rng(seed).normal(0.001, 0.01, 300)
    pd.DataFrame({"net_return": r}).to_csv(d / "trades_val.csv", index=False)
    (d / "run_info.json").write_text(json.dumps({"data": {"bars_per_year": 252}}))
    (d / "metrics.json").write_text(json.dumps({"verdict": {"sentence": f"verdict of {d.name}"}}))
    return str(d)


def test_sweep_summary_reports_measured_values_and_effective_trials(tmp_path):
    """A pruned trial's Optuna value is its last report (the curve fit's extrapolation): the summary must use
    the measured validation Sharpe, count every check of every trial, and show only the best trial's test."""
    optuna = pytest.importorskip("optuna")
    from hydra_plugins.tradelab_optuna.tradelab_optuna import write_sweep_summary
    from src.stats import expected_max

    study = optuna.create_study(direction="maximize")
    runs = {}
    pruned = study.ask({"lr_scale": optuna.distributions.LogUniformDistribution(0.3, 3.0)})
    pruned.report(5.0, step=96)  # an optimistic extrapolation, far above anything measured
    runs[0] = _fake_run(tmp_path / "t0", [0.1, 0.9, 0.2], 0)
    pruned.set_user_attr("run_dir", runs[0])
    pruned.set_user_attr("val_sharpe", 0.9)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[0].value == 5.0  # what the old trials.csv printed as "val_sharpe"
    done = study.ask({"lr_scale": optuna.distributions.LogUniformDistribution(0.3, 3.0)})
    runs[1] = _fake_run(tmp_path / "t1", [0.3, 0.5, 0.7], 1)
    done.set_user_attr("run_dir", runs[1])
    done.set_user_attr("val_sharpe", 0.7)
    study.tell(done, 0.7)
    write_sweep_summary(study, tmp_path, runs)

    trials = pd.read_csv(tmp_path / "trials.csv").set_index("trial")
    assert trials.val_sharpe.tolist() == [0.9, 0.7] and trials.curve_fit_prediction[0] == 5.0
    assert trials.val_checks.tolist() == [3, 3] and "test_sharpe" not in trials
    # by hand: pooled checks .1 .9 .2 .3 .5 .7 (mean .45, squared deviations sum to .475: V = .095);
    # within-trial variances .19 and .04 -> rho 0 (clipped) and 1 - .04/.095 = .5789: N = 3 + .5789 + .4211 * 3
    n_eff = 3 + (1 - 0.04 / 0.095) + (0.04 / 0.095) * 3
    assert n_eff == pytest.approx(4.8421, abs=1e-4)
    report = " ".join((tmp_path / "sweep_report.md").read_text().split())
    assert f"**{n_eff:.1f} effective trials**" in report and "6 validation checks over 2 trials" in report
    assert f"{0.095**0.5 * expected_max(n_eff):.3f}" in report
    assert "verdict of t1" in report and "verdict of t0" not in report  # the selected trial's test only


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
