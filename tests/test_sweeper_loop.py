"""The sweeper's loop with a stand-in launcher: a job that exits, returns NaN or is stopped by hand is accounted
for, and the sweep ends (no training runs here; tests/test_sweep.py runs the real CLI)."""

from __future__ import annotations

import math

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.tradelab_optuna.tradelab_optuna import TradelabOptunaSweeper


class Launcher:
    """Runs ``job(overrides)`` in place of a Hydra job; a raised exception becomes a failed JobReturn."""

    def __init__(self, job):
        self.job, self.calls = job, []

    def launch(self, job_overrides, initial_job_idx):
        (overrides,) = job_overrides
        self.calls.append(initial_job_idx)
        try:
            ret = JobReturn(status=JobStatus.COMPLETED, _return_value=self.job(overrides))
        except Exception as e:
            ret = JobReturn(status=JobStatus.FAILED, _return_value=e)
        return [ret]


def sweeper(tmp_path, job, n_trials=3, max_failure_rate=1.0, storage=None):
    s = TradelabOptunaSweeper(
        sampler=optuna.samplers.RandomSampler(seed=0),
        direction="maximize",
        storage=storage,
        study_name="t",
        n_trials=n_trials,
        max_failure_rate=max_failure_rate,
        params={"x": "interval(0, 1)"},
        heartbeat_interval=1,
        grace_period=3,
    )
    s.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    s.launcher = Launcher(job)
    return s


def study(storage):
    return optuna.load_study(study_name="t", storage=storage)


def test_a_job_that_exits_is_a_failed_trial_and_the_sweep_ends(tmp_path):
    def job(overrides):
        raise SystemExit(2)  # what src.train's one-line errors do (a bad value, a numerical fault)

    db = f"sqlite:///{tmp_path / 'o.db'}"
    s = sweeper(tmp_path, job, storage=db)
    s.sweep([])
    trials = study(db).trials
    assert [t.state.name for t in trials] == ["FAIL"] * 3  # three trials, each ended: not an endless loop
    assert all(t.user_attrs["error"] == "RuntimeError: the job exited with status 2" for t in trials)
    with pytest.raises(RuntimeError, match="exited with status 2"):  # and the failure rate is enforced
        sweeper(tmp_path, job, storage=f"sqlite:///{tmp_path / 'p.db'}", max_failure_rate=0.0).sweep([])


def test_a_non_finite_result_is_an_error(tmp_path):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    sweeper(tmp_path, lambda o: math.nan, n_trials=2, storage=db).sweep([])
    trials = study(db).trials
    assert len(trials) == 2 and all("validation Sharpe of nan" in t.user_attrs["error"] for t in trials)


def test_stopped_by_hand_the_trial_is_queued_again_with_its_parameters(tmp_path):
    calls = []

    def job(overrides):
        calls.append(overrides)
        if len(calls) == 2:
            raise SystemExit(130)  # SIGINT through src.train's GracefulInterrupt
        return 1.0

    db = f"sqlite:///{tmp_path / 'o.db'}"
    with pytest.raises(KeyboardInterrupt):
        sweeper(tmp_path, job, storage=db).sweep([])
    trials = study(db).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "WAITING"]
    assert trials[2].user_attrs["requeued_from"] == 1 and trials[2].system_attrs["fixed_params"] == trials[1].params
    sweeper(tmp_path, job, storage=db).sweep([])  # the same command again
    trials = study(db).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert calls[2] == calls[1]  # the stopped trial's parameters ran again


def test_a_surplus_trial_stands_down_before_its_job(tmp_path):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    s = sweeper(tmp_path, lambda o: 1.0, n_trials=2, storage=db)
    s.sweep([])
    st = study(db)
    st.ask()  # another process took a trial that is still running (the study's 2 are done: this one is extra)
    launcher = Launcher(lambda o: 1.0)
    objective = s._objective(st, {"x": optuna.distributions.FloatDistribution(0, 1)}, {}, 3, [])
    s.launcher = launcher
    st.optimize(objective, n_trials=1, catch=(Exception,))  # 2 ended + 1 running = 3: trial 3 is surplus
    last = study(db).trials[-1]
    assert last.state.name == "FAIL" and "surplus" in last.user_attrs and launcher.calls == []
