"""Optuna sweeps through the real CLI: pruning-aware sweeper, shared storage, trial table, from_sweep=."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from omegaconf import OmegaConf

from src.core.errors import ConfigError
from src.train import with_sweep_overrides
from tests.conftest import ROOT, TINY

# TINY with 6 PPO iterations, each validated: enough points for the curve fit (min_points 4) to report
SWEEP = [
    *[o for o in TINY if not o.startswith("trainer.max_steps")],
    "trainer.max_steps=24",
    "callbacks.curve_fit_stop.min_points=4",
    "hydra.sweeper.pruner.n_startup_trials=1",
]


def _start(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "src.train", "-m", "hparams_search=ppo_optuna", *SWEEP, *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _dashboard(storage: str, path: str) -> dict:
    """GET ``path`` from optuna-dashboard's app over ``storage``, as its server would answer it."""
    import io
    import json

    import optuna
    from optuna_dashboard import wsgi

    app = wsgi(optuna.storages.RDBStorage(storage))
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "x", "SERVER_PORT": "80",
           "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr}  # fmt: skip
    status = []
    body = b"".join(app(env, lambda s, headers, exc_info=None: status.append(s)))
    assert status == ["200 OK"], body[:500]
    return json.loads(body)


@pytest.mark.slow
def test_optuna_sweep_shared_storage_and_from_sweep(tmp_path):
    """Two processes share one SQLite study of 3 trials on Optuna >= 4 and SQLAlchemy 2; Optuna's own API (what
    optuna-dashboard reads) finds the curve-fit reports and the validation Sharpe as separately named values."""
    import optuna

    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    a, b = tmp_path / "a", tmp_path / "b"
    common = [f"hydra.sweeper.storage={db}", "hydra.sweeper.study_name=t", "hydra.sweeper.n_trials=3",
              "hydra.sweeper.heartbeat_interval=1"]  # fmt: skip
    procs = [_start(f"hydra.sweep.dir={d}", *common) for d in (a, b)]  # at once, as on two machines
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="t", storage=db)
    ran = [t for t in study.trials if "surplus" not in t.user_attrs]  # (a process that lost a race stands down)
    assert len(ran) == 3  # the study's total, shared: not 3 per process
    assert {t.state.name for t in ran} <= {"COMPLETE", "PRUNED"}
    where = [{t.number for t in ran if t.user_attrs["run_dir"].startswith(str(d))} for d in (a, b)]
    assert where[0] and where[1] and not where[0] & where[1]  # both processes ran trials, none twice
    assert study.metric_names == ["val_sharpe"] and "curve-fit" in study.user_attrs["intermediate_values"]
    for t in ran:
        assert len(t.intermediate_values) >= 2  # the curve fit reported at each check from min_points on
        assert t.user_attrs["val_sharpe"] != t.intermediate_values[max(t.intermediate_values)]
        assert t.user_attrs["run_dir"].endswith(f"trial_{t.number}")  # one directory per Optuna trial
    # what optuna-dashboard serves for this study (its own WSGI app, called without a server)
    dash = _dashboard(db, f"/api/studies/{study._study_id}")
    assert dash["objective_names"] == ["val_sharpe"] and len(dash["trials"]) == len(study.trials)
    for t in (t for t in dash["trials"] if t["number"] in {r.number for r in ran}):
        assert len(t["intermediate_values"]) >= 2 and {p["name"] for p in t["params"]} >= {"lr_scale", "optimizer"}
        assert "val_sharpe" in {a["key"] for a in t["user_attrs"]}
    # a process whose share is done waits for the other's last trial, so both write the whole study's summary
    assert len(pd.read_csv(a / "trials.csv")) == 3

    trials = pd.read_csv(b / "trials.csv")
    cols = {"trial", "state", "val_sharpe", "val_checks", "curve_fit_prediction", "lr_scale", "optimizer"}
    assert len(trials) == 3 and cols <= set(trials)
    assert "test_sharpe" not in trials  # only the selected trial's test period is reported (sweep_report.md)
    for row in trials.itertuples():
        # every validation column is measured: the trial's best validation check, whatever the curve fit predicted
        hist = pd.read_csv(f"{row.run_dir}/val_history.csv")
        assert row.val_checks == len(hist)
        assert row.val_sharpe == pytest.approx(hist["sharpe"].max(), abs=1e-5)
    assert all(t.user_attrs["val_sharpe"] == pytest.approx(trials.set_index("trial").val_sharpe[t.number], abs=1e-5)
               for t in ran)  # fmt: skip
    report = (b / "sweep_report.md").read_text()
    assert "Deflated" in report and "buy-and-hold" in report
    assert "over 3 trials" in " ".join(report.split())
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


@pytest.mark.slow
def test_killed_sweep_resumes_without_losing_a_trial(tmp_path):
    """SIGKILL a sweep in its second trial, run the same command again: the dead trial goes stale (no heartbeat),
    is failed and re-queued with its parameters, and the study ends with both of its trials."""
    import optuna

    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.sweeper.storage={db}", "hydra.sweeper.study_name=k",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]  # fmt: skip
    first = _start(*args)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="k", storage=db).trials
        except (KeyError, ValueError, optuna.exceptions.StorageInternalError):
            continue  # not created yet
        if any(t.number == 1 and t.state.name == "RUNNING" for t in trials):
            break
    assert first.poll() is None, "the sweep ended before its second trial ran"
    time.sleep(2)  # well inside the trial
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = optuna.load_study(study_name="k", storage=db).trials
    assert [t.state.name for t in killed][1:] == ["RUNNING"]  # what a crash leaves behind

    second = _start(*args)  # the same command
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="k", storage=db).trials
    states = [t.state.name for t in trials]
    assert len(trials) == 3 and states[1] == "FAIL" and {states[0], states[2]} <= {"COMPLETE", "PRUNED"}
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.params == trials[1].params  # the dead trial's parameters ran again
    table = pd.read_csv(tmp_path / "sweep" / "trials.csv").set_index("trial")
    assert table.state.tolist() == states and table.retry_of[retry.number] == 1


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
    import optuna

    from hydra_plugins.tradelab_optuna.summary import write_sweep_summary
    from src.evaluation.stats import expected_max

    study = optuna.create_study(direction="maximize")
    runs = {}
    pruned = study.ask({"lr_scale": optuna.distributions.FloatDistribution(0.3, 3.0, log=True)})
    pruned.report(5.0, step=96)  # an optimistic extrapolation, far above anything measured
    runs[0] = _fake_run(tmp_path / "t0", [0.1, 0.9, 0.2], 0)
    pruned.set_user_attr("run_dir", runs[0])
    pruned.set_user_attr("val_sharpe", 0.9)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[0].value == 5.0  # what the old trials.csv printed as "val_sharpe"
    done = study.ask({"lr_scale": optuna.distributions.FloatDistribution(0.3, 3.0, log=True)})
    runs[1] = _fake_run(tmp_path / "t1", [0.3, 0.5, 0.7], 1)
    done.set_user_attr("run_dir", runs[1])
    done.set_user_attr("val_sharpe", 0.7)
    study.tell(done, 0.7)
    write_sweep_summary(study, tmp_path)

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
