"""``hydra/sweeper=tradelab_optuna``: hydra-optuna-sweeper's search space, samplers and storage, plus pruning.

hydra-optuna-sweeper asks Optuna for trials and tells it the results, but a job cannot report
intermediate values, so nothing can be pruned. This sweeper keeps the plugin's configuration and search
space parsing (it delegates to ``OptunaSweeperImpl``) and runs its own ask/launch/tell loop, one trial at
a time in this process: the running trial is published through :mod:`src.sweeper`, the curve-fit
early-stopping callback reports its predicted final Sharpe to it and stops the job when the study's
``pruner`` says so, and the trial is told ``PRUNED``. Parallelism is Optuna's: start several sweeps
with the same ``storage`` (e.g. ``sqlite:///outputs/optuna.db``) and ``study_name``, in several
processes or on several machines.

After the last trial it writes, into the sweep directory: ``optimization_results.yaml`` (best
parameters and value, as the plugin does), ``best_overrides.yaml`` (what ``from_sweep=<dir>`` applies),
``trials.csv`` (every trial's best *measured* validation Sharpe, never the curve fit's extrapolation, which
has its own labelled column) and ``sweep_report.md`` with the deflated Sharpe ratio of the best trial
given every validation check of every trial (:func:`src.stats.selection_benchmark`: the effective number
of trials), and that trial's test-period verdict; no other trial's test figure is listed.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class TradelabOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.tradelab_optuna.tradelab_optuna.TradelabOptunaSweeper"
    n_jobs: int = 1  # trials run one at a time here; use shared storage and several processes for more
    pruner: Any = None  # e.g. {_target_: optuna.pruners.MedianPruner, n_startup_trials: 3}


ConfigStore.instance().store(
    group="hydra/sweeper", name="tradelab_optuna", node=TradelabOptunaSweeperConf, provider="tradelab"
)


class TradelabOptunaSweeper(Sweeper):
    def __init__(self, pruner: Any = None, **kwargs: Any) -> None:
        self.impl = OptunaSweeperImpl(**kwargs)
        if pruner is None:
            pruner = optuna.pruners.NopPruner()
        elif not isinstance(pruner, optuna.pruners.BasePruner):  # Hydra instantiates nested nodes already
            pruner = instantiate(pruner)
        self.pruner = pruner

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from src.sweeper import set_active_trial, take_pruned

        impl = self.impl
        impl._process_searchspace_config()
        space, fixed = create_params_from_overrides([*impl._parse_sweeper_params_config(), *arguments])
        if impl.search_space_distributions:
            space = {**impl.search_space_distributions, **space}
        for name in fixed:
            space.pop(name, None)
        directions = impl._get_directions()
        if len(directions) != 1:
            raise ValueError("tradelab_optuna optimises one objective (the validation Sharpe)")
        study = optuna.create_study(
            study_name=impl.study_name,
            storage=impl.storage,
            sampler=impl.sampler,
            pruner=self.pruner,
            direction=directions[0],
            load_if_exists=True,
        )
        log.info(
            f"Study {study.study_name}: storage {impl.storage}, sampler {type(impl.sampler).__name__}, "
            f"pruner {type(self.pruner).__name__}, {impl.n_trials} trials"
        )
        sweep_dir = Path(impl.config.hydra.sweep.dir)
        runs: dict[int, str] = {}
        failures = 0
        for _ in range(impl.n_trials):
            trial = study.ask()
            overrides = impl._configure_trials([trial], space, fixed)
            set_active_trial(trial)
            try:
                (ret,) = impl.launcher.launch(overrides, initial_job_idx=impl.job_idx)
            finally:
                set_active_trial(None)
            impl.job_idx += 1
            pruned = take_pruned()
            runs[trial.number] = str(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else ""
            try:
                value = float(ret.return_value)  # re-raises the job's exception
            except Exception as e:
                failures += 1
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log.warning(f"trial {trial.number} failed: {e}")
                if failures / impl.n_trials > impl.max_failure_rate:
                    raise
                continue
            trial.set_user_attr("run_dir", runs[trial.number])
            # the run's selected checkpoint's validation Sharpe, as measured: a pruned trial's Optuna value is
            # its last *reported* number, the curve fit's extrapolation, which is not a validation figure
            trial.set_user_attr("val_sharpe", value)
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, value)
        write_sweep_summary(study, sweep_dir, runs)


def write_sweep_summary(study: optuna.Study, sweep_dir: Path, runs: dict[int, str]) -> None:
    """optimization_results.yaml, best_overrides.yaml, trials.csv and sweep_report.md in ``sweep_dir``."""
    import numpy as np
    import pandas as pd

    from src.evaluation import excess_series
    from src.reporting import atomic_write
    from src.stats import probabilistic_sharpe_ratio, selection_benchmark

    sweep_dir.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        log.warning("no trial completed: no best parameters to write")
        return
    best = study.best_trial
    # searched parameters and the sweep's fixed overrides (its env, budget, ...), but not the search overlay
    # itself nor settings of its stopping callbacks: from_sweep starts a plain run, without curve-fit stopping
    overlay = ("hparams_search", "callbacks.", "+callbacks.", "~callbacks.")
    ours = ("run_dir", "val_sharpe")  # what this sweeper records; every other user attribute is a fixed override
    fixed = {k: v for k, v in best.user_attrs.items() if k not in ours and not k.startswith(overlay)}
    params = {**best.params, **fixed}
    atomic_write(
        sweep_dir / "optimization_results.yaml",
        OmegaConf.to_yaml({"name": "optuna", "best_params": params, "best_value": best.value}),
    )
    atomic_write(sweep_dir / "best_overrides.yaml", OmegaConf.to_yaml([f"{k}={v}" for k, v in params.items()]))

    rows = []
    for t in study.trials:
        run = Path(t.user_attrs.get("run_dir") or runs.get(t.number, ""))
        hist = run / "val_history.csv"
        checks = pd.read_csv(hist)["sharpe"].to_numpy(dtype=float) if hist.is_file() else np.zeros(0)
        measured = t.user_attrs.get("val_sharpe", t.value if t.state == optuna.trial.TrialState.COMPLETE else None)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "val_sharpe": measured,  # best measured validation Sharpe (the selected checkpoint's)
                "val_checks": len(checks),
                "curve_fit_prediction": max(t.intermediate_values.items())[1] if t.intermediate_values else None,
                **t.params,
                "run_dir": str(run),
                "_checks": checks,
            }
        )
    groups = [r.pop("_checks") for r in rows]
    table = pd.DataFrame(rows)
    atomic_write(sweep_dir / "trials.csv", table.to_csv(index=False, float_format="%.6g"))

    # the best validation Sharpe among every check of every trial is inflated by the selection itself
    run = Path(best.user_attrs.get("run_dir", ""))
    info = json.loads((run / "run_info.json").read_text())
    bpy = float(info["data"]["bars_per_year"])
    val_returns = excess_series(pd.read_csv(run / "trades_val.csv"))
    candidates = [g for g in groups if len(g)] or [np.array([best.value])]
    bench = selection_benchmark(candidates, bpy)
    dsr = probabilistic_sharpe_ratio(val_returns, bench["expected_max_sharpe"], bpy)  # the deflated SR
    verdict = json.loads((run / "metrics.json").read_text()).get("verdict", {}).get("sentence", "")
    shown = table.drop(columns=["run_dir"]).to_string(index=False, float_format=lambda v: f"{v:.4g}")
    md = f"""# Optuna sweep: {study.study_name}

{len(study.trials)} trials ({len(complete)} complete, {sum(r["state"] == "PRUNED" for r in rows)} pruned,
{sum(r["state"] == "FAIL" for r in rows)} failed); objective: validation Sharpe of each run's selected checkpoint.

Best trial {best.number}: validation Sharpe {best.value:.3f} with `{" ".join(f"{k}={v}" for k, v in params.items())}`
(run: `{run}`). Start a run from these parameters with `python -m src.train from_sweep={sweep_dir}`.

Selection: the best trial's checkpoint was chosen among {bench["checks"]} validation checks over
{bench["trials"]} trials. Checks of one trial are correlated, so they count as
**{bench["effective_trials"]:.1f} effective trials** (a trial of m checks counts ρ + (1 − ρ)·m, with
ρ = 1 − V_trial / V the intraclass correlation of its checks' Sharpe ratios; `src/stats.py`,
`selection_benchmark`, and `docs/statistics.md`). By luck alone the best would reach a validation Sharpe
of about {bench["expected_max_sharpe"]:.3f} (√V·E[max of N], Bailey & López de Prado 2014, with
V = {bench["sharpe_std"]:.3f}² the variance of every check's Sharpe). Deflated Sharpe ratio of the best
trial: **{dsr:.3f}** (the probability that its true validation Sharpe beats that bar).

Its test period, evaluated once: {verdict}

Only the selected trial's test period is reported: choosing among trials by their test figures would
make the test split a second validation split. `val_sharpe` is each trial's best measured validation
Sharpe; `curve_fit_prediction` is the curve fit's extrapolation to the end of the budget (what the pruner
saw), not a measurement.

```
{shown}
```
"""
    atomic_write(sweep_dir / "sweep_report.md", md)
    log.info(
        f"best trial {best.number}: val Sharpe {best.value:.3f}, deflated Sharpe ratio {dsr:.3f} "
        f"({bench['effective_trials']:.1f} effective trials); {sweep_dir / 'sweep_report.md'}"
    )
