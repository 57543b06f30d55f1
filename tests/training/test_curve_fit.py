"""Learning-curve fits and the early-stopping rule, on curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.training.curve_fit import exp_decay, fit_curve, log_growth, stalled

T = np.linspace(0.05, 0.5, 10)  # the first half of a run's budget


def test_exact_curves_are_recovered_and_extrapolated_to_the_budget():
    fit = fit_curve("exp_decay", T, exp_decay(T, 2.0, 4.0, 0.3))
    assert fit.ok and fit.params == pytest.approx((2.0, 4.0, 0.3), rel=1e-4)
    assert fit.prediction == pytest.approx(2 * math.exp(-4) + 0.3, rel=1e-5)
    fit = fit_curve("log_growth", T, log_growth(T, 0.8, 5.0, 0.1))
    assert fit.ok and fit.prediction == pytest.approx(0.8 * math.log(6) + 0.1, rel=1e-4)


def test_a_falling_sharpe_is_fitted_as_falling():
    y = log_growth(T, -0.5, 3.0, 0.2)
    fit = fit_curve("log_growth", T, y)
    assert fit.params[0] < 0 and fit.prediction == pytest.approx(-0.5 * math.log(4) + 0.2, rel=1e-4)
    assert fit.prediction < y[-1]


def test_noisy_curve_prediction_is_close():
    rng = np.random.default_rng(0)
    y = log_growth(T, 0.8, 5.0, 0.1) + rng.normal(0, 0.01, len(T))
    assert fit_curve("log_growth", T, y).prediction == pytest.approx(0.8 * math.log(6) + 0.1, abs=0.1)


def test_fallback_when_the_fit_cannot_be_made():
    few = fit_curve("log_growth", T[:3], np.array([0.1, 0.2, 0.6]))
    assert not few.ok and few.prediction == pytest.approx(0.3) and "need 4" in few.message
    assert all(math.isnan(p) for p in few.params)
    bad = fit_curve("exp_decay", T, np.array([1.0, np.nan, *np.ones(8)]))
    assert not bad.ok and bad.prediction == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown curve"):
        fit_curve("power_law", T, T)
    with pytest.raises(ValueError, match="points"):
        fit_curve("exp_decay", T, T[:-1])


def test_stalled_needs_patience_evaluations_without_improvement():
    assert not stalled([0.1, 0.2, 0.3], patience=3)  # too short to tell
    assert not stalled([0.1, 0.2, 0.3, 0.4], patience=2)  # still improving
    assert stalled([0.5, 0.2, 0.3, 0.4], patience=3)  # best is 3 evaluations old
    assert not stalled([0.5, 0.2, 0.3, 0.55], patience=3)  # a new best resets it
    assert stalled([0.5, 0.2, 0.3, 0.55], patience=3, min_delta=0.1)  # ... unless it is too small


# ---- the Lightning callback, driven by scripted validation metrics ----
from types import SimpleNamespace  # noqa: E402

from src.core.sweeper import set_active_trial  # noqa: E402
from src.training.callbacks import CurveFitEarlyStopping  # noqa: E402


def _drive(cb: CurveFitEarlyStopping, sharpes, losses=None, every=100, budget=10_000) -> SimpleNamespace:
    """Feed ``sharpes`` as successive validations; return the fake trainer (``should_stop``, last step)."""
    trainer = SimpleNamespace(
        sanity_checking=False, state=SimpleNamespace(fn="fit"), max_steps=budget, should_stop=False, global_step=0
    )
    module = SimpleNamespace()
    for i, s in enumerate(sharpes):
        trainer.global_step = (i + 1) * every
        loss = losses[i] if losses is not None else 1.0 / (i + 1)
        trainer.callback_metrics = {"val/sharpe": s, "val/value_loss": loss}
        cb.on_validation_end(trainer, module)
        if trainer.should_stop:
            break
    return trainer


def test_a_run_that_keeps_improving_is_never_stopped():
    cb = CurveFitEarlyStopping(min_points=4, patience=2, threshold=5.0)  # a target it will not reach
    trainer = _drive(cb, [-0.5 + 0.05 * i for i in range(30)])
    assert not trainer.should_stop and cb.stopped is None
    assert len(cb.decisions) == 27 and all(not d["stalled"] for d in cb.decisions)


def test_a_stalled_hopeless_run_stops_with_its_reason():
    cb = CurveFitEarlyStopping(min_points=4, patience=3, threshold=0.5)
    trainer = _drive(cb, [0.1, 0.3, 0.2, 0.25, 0.2, 0.1, 0.15, 0.1, 0.0])
    assert trainer.should_stop and trainer.global_step == 500  # best (0.3, step 200) 3 checks old at step 500
    d = cb.decisions[-1]
    assert d["stop"] and d["stalled"] and d["predicted_sharpe"] < 0.5 and len(d["sharpe_fit"]) == 3
    assert "predicted final Sharpe" in cb.stopped["reason"]
    state = cb.state_dict()  # survives a checkpoint
    again = CurveFitEarlyStopping(min_points=4, patience=3)
    again.load_state_dict(state)
    assert again.decisions == cb.decisions and again.stopped == cb.stopped


def test_a_stalled_run_predicted_to_be_good_continues():
    cb = CurveFitEarlyStopping(min_points=4, patience=2, threshold=0.5)
    trainer = _drive(cb, [1.5, 2.0, 1.9, 1.8, 1.9, 1.85])
    assert not trainer.should_stop and cb.decisions[-1]["stalled"] and cb.decisions[-1]["predicted_sharpe"] > 0.5


def test_optuna_pruner_sees_the_prediction_and_prunes_only_a_stalled_run():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(1, 0))
    good = study.ask()
    for step in range(400, 2100, 100):
        good.report(2.0, step)
    study.tell(good, 2.0)

    rising = study.ask()  # below the pruner's bar but still improving: never stopped
    set_active_trial(rising)
    try:
        cb = CurveFitEarlyStopping(min_points=4, patience=2, threshold=-10.0)  # the threshold alone never stops
        trainer = _drive(cb, [0.1, 0.2, 0.25, 0.3, 0.35, 0.4])
    finally:
        set_active_trial(None)
    assert not trainer.should_stop and all(d["pruner_vote"] and not d["pruned"] for d in cb.decisions)
    assert rising.storage.get_trial(rising._trial_id).intermediate_values[400] == pytest.approx(
        cb.decisions[0]["predicted_sharpe"]
    )
    study.tell(rising, 0.4)

    flat = study.ask()  # below the bar and stalled for `patience` checks: pruned
    set_active_trial(flat)
    try:
        cb = CurveFitEarlyStopping(min_points=4, patience=2, threshold=-10.0)
        trainer = _drive(cb, [0.1, 0.3, 0.2, 0.25, 0.2, 0.1, 0.2])
    finally:
        set_active_trial(None)
    assert trainer.should_stop and cb.stopped["pruned"] and trainer.global_step == 400
    assert "Optuna pruned" in cb.stopped["reason"]
