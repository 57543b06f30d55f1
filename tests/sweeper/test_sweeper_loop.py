"""The sweeper's loop with a stand-in launcher: a job that exits, returns NaN or is stopped by hand is accounted
for, and the sweep ends (no training runs here; tests/sweeper/test_sweep.py runs the real CLI)."""

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


def within(seconds: float, fn) -> None:
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) if it has not returned in ``seconds``."""
    import threading

    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (an endless sweep loop)"


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
    within(60, lambda: sweeper(tmp_path, lambda o: math.nan, n_trials=2, storage=db).sweep([]))
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


def test_a_trial_failed_as_stale_while_alive_does_not_stop_the_sweep(tmp_path):
    """Late heartbeats: another process fails a live trial and re-queues it. Its result is dropped (Optuna will not
    take it), it is not this job's error (max_failure_rate 0 does not stop the sweep), and the copy runs it."""
    from src.core.sweeper import active_trial

    db = f"sqlite:///{tmp_path / 'o.db'}"
    calls = []

    def job(overrides):
        calls.append(overrides)
        if len(calls) == 1:  # what another process's fail_stale_trials does to this running trial
            st = optuna.load_study(study_name="t", storage=db)
            t = active_trial()
            st._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(st, st._storage.get_trial(t._trial_id))
        return 1.0

    sweeper(tmp_path, job, n_trials=1, max_failure_rate=0.0, storage=db).sweep([])
    trials = study(db).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and "error" not in trials[0].user_attrs
    assert calls[1] == calls[0]  # the copy ran the same parameters


def test_an_orphaned_running_trial_is_failed_and_run_again(tmp_path):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    st = optuna.create_study(study_name="t", storage=db, direction="maximize")
    st.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # a process died inside ask(): RUNNING forever
    within(60, lambda: sweeper(tmp_path, lambda o: 1.0, n_trials=2, storage=db).sweep([]))  # grace period 3 s
    trials = study(db).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].user_attrs.get("requeued_from") == 0 or trials[1].user_attrs.get("requeued_from") == 0
