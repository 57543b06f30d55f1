"""A finished sweep's files: optimization_results.yaml, best_overrides.yaml, trials.csv and sweep_report.md.

``trials.csv`` has every trial's best *measured* validation Sharpe (the user attribute ``val_sharpe``), never the
curve fit's extrapolation (a pruned trial's Optuna value), which has its own labelled column; ``sweep_report.md``
gives the deflated Sharpe ratio of the best trial given every validation check of every trial
(:func:`src.evaluation.stats.selection_benchmark`: the effective number of trials), and that trial's
test-period verdict; no other trial's test figure is listed.
"""

import json
import logging
from pathlib import Path

import optuna
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def write_sweep_summary(study: optuna.Study, sweep_dir: Path) -> None:
    """optimization_results.yaml, best_overrides.yaml, trials.csv and sweep_report.md in ``sweep_dir``."""
    import numpy as np
    import pandas as pd

    from src.core.files import atomic_write
    from src.evaluation.stats import probabilistic_sharpe_ratio, selection_benchmark
    from src.evaluation.walk import excess_series

    sweep_dir.mkdir(parents=True, exist_ok=True)
    trials = [t for t in study.trials if "surplus" not in t.user_attrs]  # a surplus trial never ran its job
    rows = []
    for t in trials:
        where = t.user_attrs.get("run_dir", "")
        hist = Path(where) / "val_history.csv"
        checks = pd.read_csv(hist)["sharpe"].to_numpy(dtype=float) if where and hist.is_file() else np.zeros(0)
        measured = t.user_attrs.get("val_sharpe", t.value if t.state == optuna.trial.TrialState.COMPLETE else None)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "val_sharpe": measured,  # best measured validation Sharpe (the selected checkpoint's)
                "val_checks": len(checks),
                "curve_fit_prediction": max(t.intermediate_values.items())[1] if t.intermediate_values else None,
                # a trial re-run with the parameters of one whose process died (or that was stopped by hand)
                "retry_of": t.system_attrs.get("failed_trial", t.user_attrs.get("requeued_from")),
                **t.params,
                "error": t.user_attrs.get("error"),  # a failed trial's reason
                "run_dir": where,
                "_checks": checks,
            }
        )
    groups = [r.pop("_checks") for r in rows]
    table = pd.DataFrame(rows)
    atomic_write(sweep_dir / "trials.csv", table.to_csv(index=False, float_format="%.6g"))

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        log.warning("no trial completed: no best parameters to write")
        return
    best = study.best_trial
    # searched parameters and the sweep's fixed overrides (its env, budget, ...), but not the search overlay
    # itself nor settings of its stopping callbacks: from_sweep starts a plain run, without curve-fit stopping
    overlay = ("hparams_search", "callbacks.", "+callbacks.", "~callbacks.")
    given = best.user_attrs.get("fixed_overrides", {})
    fixed = {k: v for k, v in given.items() if not k.startswith(overlay)}
    params = {**best.params, **fixed}
    atomic_write(
        sweep_dir / "optimization_results.yaml",
        OmegaConf.to_yaml({"name": "optuna", "best_params": params, "best_value": best.value}),
    )
    atomic_write(sweep_dir / "best_overrides.yaml", OmegaConf.to_yaml([f"{k}={v}" for k, v in params.items()]))

    # the best validation Sharpe among every check of every trial is inflated by the selection itself
    run = Path(best.user_attrs.get("run_dir", ""))
    away = [
        r["trial"] for r, g in zip(rows, groups, strict=True) if r["state"] in ("COMPLETE", "PRUNED") and not len(g)
    ]
    if away or not (run / "trades_val.csv").is_file():  # trials that ran on other machines, without a shared disk
        hosts = sorted({str(t.user_attrs.get("host", "?")) for t in trials if t.number in away})
        atomic_write(
            sweep_dir / "sweep_report.md",
            f"# Optuna sweep: {study.study_name}\n\nBest trial {best.number}: validation Sharpe {best.value:.3f} "
            f"(run: `{run}` on {best.user_attrs.get('host', '?')}).\n\nThe run directories of trials "
            f"{away or [best.number]} are not on this machine (hosts: {', '.join(hosts) or '?'}), so the deflated "
            "Sharpe ratio, which counts every validation check of every trial, and the best trial's test verdict "
            "are not computed here. Run the same sweep command on a machine that sees every run directory (a shared "
            "disk): the study is complete, so it only writes this summary.\n",
        )
        log.warning(f"sweep summary without deflation: trials {away or [best.number]} ran elsewhere")
        return
    info = json.loads((run / "run_info.json").read_text())
    bpy = float(info["data"]["bars_per_year"])
    val_returns = excess_series(pd.read_csv(run / "trades_val.csv"))
    candidates = [g for g in groups if len(g)] or [np.array([best.value])]
    bench = selection_benchmark(candidates, bpy)
    dsr = probabilistic_sharpe_ratio(val_returns, bench["expected_max_sharpe"], bpy)  # the deflated SR
    verdict = json.loads((run / "metrics.json").read_text()).get("verdict", {}).get("sentence", "")
    shown = table.drop(columns=["run_dir"]).to_string(index=False, float_format=lambda v: f"{v:.4g}")
    md = f"""# Optuna sweep: {study.study_name}

{len(trials)} trials ({len(complete)} complete, {sum(r["state"] == "PRUNED" for r in rows)} pruned,
{sum(r["state"] == "FAIL" for r in rows)} failed); objective: validation Sharpe of each run's selected checkpoint.

Best trial {best.number}: validation Sharpe {best.value:.3f} with `{" ".join(f"{k}={v}" for k, v in params.items())}`
(run: `{run}`). Start a run from these parameters with `python -m src.train from_sweep={sweep_dir}`.

Selection: the best trial's checkpoint was chosen among {bench["checks"]} validation checks over
{bench["trials"]} trials. Checks of one trial are correlated, so they count as
**{bench["effective_trials"]:.1f} effective trials** (a trial of m checks counts ρ + (1 − ρ)·m, with
ρ = 1 − V_trial / V the intraclass correlation of its checks' Sharpe ratios; `src/evaluation/stats.py`,
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
