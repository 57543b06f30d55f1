"""``hydra/sweeper=tradelab_optuna``: Optuna (>= 4) search with pruning, on hydra-core alone.

Runs one trial at a time in this process through ``study.optimize``: the trial's parameters become Hydra
overrides, the job runs through the configured launcher, and the running trial is published through
:mod:`src.core.sweeper`; the curve-fit early-stopping callback reports its predicted final Sharpe to it at each
validation check and stops the job when the study's ``pruner`` votes to prune a stalled run (the trial is then
``PRUNED``). The objective is the validation Sharpe of the run's selected checkpoint (``study.metric_names``:
``val_sharpe``).

``n_trials`` is the *study's* number of trials, so a sweep re-run with the same command and ``storage`` does
what is left, and several processes or machines given the same ``storage`` and ``study_name`` share the work
(TPE's constant liar keeps them from sampling the same point). With a storage, each running trial records a
heartbeat; a trial whose process died (killed, out of memory, machine lost) goes stale after ``grace_period``
seconds, is marked ``FAIL`` and re-queued with the same parameters (``max_retry`` times), so a killed sweep
restarted on the same storage loses no trial. Each trial's run directory is ``trial_<Optuna trial number>``
under the sweep directory, so nothing is overwritten when processes share one.

After the last trial: ``optimization_results.yaml``, ``best_overrides.yaml`` (what ``from_sweep=<dir>``
applies), ``trials.csv`` and ``sweep_report.md`` (:mod:`.summary`).
"""

import importlib.util
import inspect
import logging
import math
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from .accounting import count, orphans, rerun
from .space import grid, search_space, suggest
from .summary import write_sweep_summary

log = logging.getLogger(__name__)
STOPPED = (130, 143)  # a job's exit status after SIGINT / SIGTERM (src.train's GracefulInterrupt)


def quiet_experimental() -> None:
    """Heartbeats, stale-trial recovery, metric names and grouped TPE are experimental in Optuna: used knowingly.
    (Set when the sweeper runs: Hydra imports plugins inside ``warnings.catch_warnings``, which undoes a filter.)"""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


OBJECTIVE = "val_sharpe"
INTERMEDIATE = (
    "curve-fit prediction of the final validation Sharpe, reported at each validation check (step: gradient step)"
)

SAMPLERS = {  # hydra/sweeper/sampler=<name>; every one takes hydra.sweeper.sampler.seed
    # n_startup_trials: random trials before TPE models (a quarter of the default 20; Optuna says 10).
    # multivariate TPE models the parameters jointly; group=True splits conditional spaces; the constant liar
    # treats running trials as bad so that processes sharing a study do not sample the same point
    "tpe": {
        "_target_": "optuna.samplers.TPESampler",
        "seed": None,
        "n_startup_trials": 5,
        "multivariate": True,
        "group": True,
        "constant_liar": True,
    },
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": 0, "scramble": True},  # one sequence for all processes
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": None},
    "grid": {"_target_": "optuna.samplers.GridSampler", "_partial_": True, "seed": None},  # the space is filled in
}


@dataclass
class TradelabOptunaSweeperConf:
    _target_: str = "hydra_plugins.tradelab_optuna.tradelab_optuna.TradelabOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}])
    sampler: Any = None
    direction: str = "maximize"
    storage: Any = None  # an RDB URL (sqlite:///outputs/optuna.db, postgresql://...) or null (in memory)
    study_name: str | None = None
    n_trials: int = 20  # the study's total: a re-run on the same storage does what is left
    max_failure_rate: float = 0.0  # fraction of n_trials that may raise before the sweep stops
    params: Any = None  # key: choice(...) | range(...) | interval(...) | tag(log, interval(...))
    pruner: Any = None  # e.g. {_target_: optuna.pruners.MedianPruner, n_startup_trials: 3}
    heartbeat_interval: int | None = 30  # seconds; null: none (a dead process's trial stays RUNNING)
    grace_period: int | None = 180  # seconds without a heartbeat before a trial is stale (null: 2 intervals)
    max_retry: int | None = 3  # times a stale trial is re-queued with its parameters


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="tradelab_optuna", node=TradelabOptunaSweeperConf, provider="tradelab")
for _name, _node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="tradelab")


def make_storage(url: Any, heartbeat_interval: int | None, grace_period: int | None, max_retry: int | None) -> Any:
    """An ``RDBStorage`` with heartbeats and re-queueing of stale trials, from a URL; anything else as given."""
    if not isinstance(url, str):
        return url  # None (in memory) or a storage object
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several processes write to one file
    if heartbeat_interval:
        kind = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
        retry = (kind or optuna.storages.RetryFailedTrialCallback)(max_retry=max_retry)
        name = "heartbeat_stale_trial_callback"  # Optuna 5; Optuna 4 calls it failed_trial_callback
        if name not in inspect.signature(optuna.storages.RDBStorage).parameters:
            name = "failed_trial_callback"
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period, **{name: retry})
    for attempt in range(5):  # processes started together race to create the tables: the losers load them
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


class TradelabOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: str,
        storage: Any,
        study_name: str | None,
        n_trials: int,
        max_failure_rate: float,
        params: Any,
        pruner: Any = None,
        heartbeat_interval: int | None = 30,
        grace_period: int | None = 180,
        max_retry: int | None = 3,
    ) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction: 'maximize' or 'minimize' (one objective), got {direction!r}")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate: must be in [0, 1], got {max_failure_rate}")
        self.sampler, self.direction, self.study_name = sampler, direction, study_name
        self.n_trials, self.max_failure_rate = int(n_trials), float(max_failure_rate)
        self.params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params or {}
        self.pruner = pruner if pruner is not None else optuna.pruners.NopPruner()
        quiet_experimental()
        self.storage = make_storage(storage, heartbeat_interval, grace_period, max_retry)
        self.heartbeat = heartbeat_interval if isinstance(self.storage, optuna.storages.RDBStorage) else None
        self.grace = float(grace_period or 2 * (heartbeat_interval or 30))
        self.poll = float(min(heartbeat_interval or 1, 5))  # waiting for other processes' last trials
        if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
            log.warning(
                "hydra-optuna-sweeper is installed: its hydra/sweeper/sampler configs may replace tradelab's "
                "(multivariate TPE, constant liar); pip uninstall hydra-optuna-sweeper"
            )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        sampler, n_trials = self.sampler, self.n_trials
        if callable(sampler) and not isinstance(sampler, optuna.samplers.BaseSampler):  # grid: give it the space
            points = grid(space)
            sampler = sampler(points)
            n_trials = min(n_trials, math.prod(len(v) for v in points.values()))
        quiet_experimental()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=sampler,
            pruner=self.pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        if self.storage is not None:  # processes sharing a study (or resuming it) must not draw the same points
            sampler.reseed_rng()
        if study.metric_names is None:
            study.set_metric_names([OBJECTIVE])
        study.set_user_attr("intermediate_values", INTERMEDIATE)
        log.info(
            f"Study {study.study_name}: storage {self.storage}, sampler {type(sampler).__name__}, "
            f"pruner {type(self.pruner).__name__}, {n_trials} trials in all"
        )
        errors: list[BaseException] = []
        objective = self._objective(study, space, fixed, n_trials, errors)
        seen: dict[int, float] = {}  # RUNNING trials no objective started, and when this process first saw them
        while True:
            optuna.storages.fail_stale_trials(study)  # a dead process's trial: FAIL, and re-queued
            for t in orphans(study.get_trials(deepcopy=False), seen, self.grace) if self.heartbeat else []:
                # as Optuna's fail_stale_trials does (tell() would run the sampler's after_trial: a grid may stop)
                if study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                    study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
                    log.warning(f"trial {t.number} was RUNNING but no process ever started it: re-queued")
            ended, running, monitored = count(study.get_trials(deepcopy=False))
            if ended >= n_trials:
                break
            if ended + running >= n_trials:  # the rest is running elsewhere (or in a process that died)
                if not monitored or not self.heartbeat:  # no heartbeats: a dead process looks like a live one
                    break
                time.sleep(self.poll)
                continue
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,))
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as e:  # failed as stale while alive?
                if isinstance(e, ValueError) and "Cannot tell" not in str(e):
                    raise
                log.warning(
                    f"a trial of this process was failed by another (late heartbeats?); its copy runs again: {e}"
                )
            if len(errors) > self.max_failure_rate * n_trials:
                log.error(f"{len(errors)} trial(s) failed here; hydra.sweeper.max_failure_rate={self.max_failure_rate}")
                raise errors[-1]
        write_sweep_summary(study, Path(self.config.hydra.sweep.dir))

    def _objective(self, study: optuna.Study, space: dict, fixed: dict, n_trials: int, errors: list):
        """The function ``study.optimize`` calls: one Hydra job with the trial's parameters."""

        def objective(trial: optuna.Trial) -> float:
            from src.core.sweeper import set_active_trial, take_pruned

            try:
                # "started" names this trial: a re-queued copy inherits its original's attributes, not this one
                trial.set_user_attr("started", f"{trial.number}@{socket.gethostname()}:{os.getpid()}")
                trial.set_user_attr("host", socket.gethostname())
                trial.set_user_attr("heartbeat", self.heartbeat)  # a waiting process may wait for it (or not)
                earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
                ended, running, _ = count(earlier, rerun(study.get_trials(deepcopy=False)))
                if ended + running >= n_trials:  # another process took the study's last trial first
                    trial.set_user_attr("surplus", f"the study's {n_trials} trials were taken; not run")
                    raise Surplus(f"trial {trial.number}: surplus (another process took the last trial)")
                params = {name: suggest(trial, name, dist) for name, dist in space.items()}
                trial.set_user_attr("fixed_overrides", fixed)
                overrides = [f"{k}={v}" for k, v in {**params, **fixed}.items()]
                set_active_trial(trial)
                try:  # the job's directory is trial_<number>: unique in the study, whichever process runs it
                    (ret,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
                except SystemExit as e:
                    if e.code in STOPPED:  # stopped by hand or by the cluster: Optuna fails it on KeyboardInterrupt
                        raise KeyboardInterrupt from e
                    raise RuntimeError(f"the job exited with status {e.code}") from e  # a one-line error
                finally:
                    set_active_trial(None)
                pruned = take_pruned()
                trial.set_user_attr("run_dir", str(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else "")
                value = float(ret.return_value)  # re-raises the job's exception
                if not math.isfinite(value):
                    raise ValueError(f"the job returned a validation Sharpe of {value}")
                # the selected checkpoint's validation Sharpe, as measured: a pruned trial's Optuna value is its last
                # *reported* number, the curve fit's extrapolation, which is not a validation figure
                trial.set_user_attr(OBJECTIVE, value)
            except KeyboardInterrupt:
                study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})  # run it again later
                raise
            except Surplus:
                raise
            except Exception as e:
                # raises UpdateFinishedTrialError when another process failed this live trial as stale: then it is
                # not this job's error and is not counted
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:1000])
                errors.append(e)
                raise
            if pruned:
                raise optuna.TrialPruned()
            return value

        return objective


class Surplus(Exception):
    """Processes raced for the study's last trial; this one stands down before training."""
