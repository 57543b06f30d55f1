"""The sweeper's own pieces: Hydra's sweep syntax as Optuna distributions, sampler configs, trial accounting."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.tradelab_optuna.accounting import count, orphans, rerun
from hydra_plugins.tradelab_optuna.space import grid, search_space, suggest
from hydra_plugins.tradelab_optuna.tradelab_optuna import SAMPLERS
from tests.conftest import compose_cfg


def test_search_space_parses_hydra_sweep_syntax():
    space, fixed = search_space(
        [
            "a=choice(1, x, 2.5)",
            "b=range(1, 5)",  # Python's range: 1..4
            "c=range(0.0, 0.5, 0.1)",  # 0, .1, .2, .3, .4
            "d=tag(log, interval(1e-4, 1e-2))",
            "e=interval(2, 8)",  # Hydra reads an interval's ends as floats
            "f=interval(0.1, 0.3)",
            "g=shuffle(range(1, 4))",
            "env=synthetic",
            "b=range(2, 10, 3)",  # a later override of a key replaces the earlier one
        ]
    )
    assert fixed == {"env": "synthetic"}
    assert space["a"] == CategoricalDistribution([1, "x", 2.5])
    assert space["b"] == IntDistribution(2, 8, step=3)  # 2, 5, 8
    c = space["c"]
    assert isinstance(c, FloatDistribution) and (c.low, c.step) == (0.0, 0.1) and c.high == pytest.approx(0.4)
    assert space["d"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["e"] == FloatDistribution(2.0, 8.0)
    assert space["f"] == FloatDistribution(0.1, 0.3)
    assert isinstance(space["g"], CategoricalDistribution) and sorted(space["g"].choices) == [1, 2, 3]
    assert grid({"b": space["b"], "a": space["a"]}) == {"b": [2, 5, 8], "a": [1, "x", 2.5]}
    with pytest.raises(ValueError, match="f: the grid sampler needs"):
        grid({"f": space["f"]})


def test_suggest_samples_inside_each_distribution():
    space, _ = search_space(["a=choice(p, q)", "b=range(2, 10, 3)", "d=tag(log, interval(1e-4, 1e-2))"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        t = study.ask()
        v = {name: suggest(t, name, dist) for name, dist in space.items()}
        assert v["a"] in ("p", "q") and v["b"] in (2, 5, 8) and 1e-4 <= v["d"] <= 1e-2
        assert t.distributions == space  # what Optuna records is the distribution we parsed
        study.tell(t, 0.0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_configs_build(name, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg(["hparams_search=ppo_optuna", f"hydra/sweeper/sampler={name}"], tmp_path)
    sampler = instantiate(cfg.hydra.sweeper.sampler)
    if name == "grid":
        sampler = sampler({"a": [1, 2]})
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    assert type(sampler).__name__.lower().startswith(name if name != "gp" else "gp")
    if name == "tpe":  # multivariate, grouped, with the constant liar for processes sharing a study
        assert cfg.hydra.sweeper.sampler.multivariate and cfg.hydra.sweeper.sampler.constant_liar


def test_count_leaves_out_trials_that_run_again_and_surplus_ones():
    S = optuna.trial.TrialState

    def trial(number, state, system_attrs=None, **attrs):
        t = optuna.trial.create_trial(
            state=state, value=1.0 if state == S.COMPLETE else None, user_attrs=attrs, system_attrs=system_attrs
        )
        t.number = number
        return t

    trials = [
        trial(0, S.COMPLETE),
        trial(1, S.PRUNED),
        trial(2, S.FAIL, error="ValueError: the job raised"),  # ran to an end: counted
        trial(3, S.FAIL),  # its process died; trial 6 runs it again: not counted
        trial(4, S.FAIL),  # stopped by hand; trial 7 runs it again: not counted
        trial(5, S.FAIL),  # died, retries exhausted: counted (it is lost, and says so)
        trial(6, S.RUNNING, {"failed_trial": 3, "retry_history": [3]}, heartbeat=30, started="6@a:1"),
        trial(7, S.WAITING, requeued_from=4),
        trial(8, S.FAIL, surplus="taken"),  # stood down before training: not counted
        trial(9, S.RUNNING, started="9@b:2", heartbeat=None),  # a process without heartbeats: not monitored
    ]
    assert rerun(trials) == {3, 4}
    assert count(trials) == (4, 2, 1)
    assert count(trials[:6], rerun(trials)) == (4, 0, 0)  # the links may live in later trials


def test_orphans_are_running_trials_no_objective_started():
    S = optuna.trial.TrialState
    mine = optuna.trial.create_trial(state=S.RUNNING, user_attrs={"started": "0@a:1", "heartbeat": 30})
    copy = optuna.trial.create_trial(state=S.RUNNING, user_attrs={"started": "7@a:1", "heartbeat": 30})
    never = optuna.trial.create_trial(state=S.RUNNING)  # killed inside study.ask(): no heartbeat ever
    mine.number, copy.number, never.number = 0, 8, 9  # 8: a re-queued copy of trial 7 (it inherited its attributes)
    seen: dict[int, float] = {}
    assert orphans([mine, copy, never], seen, grace=60, now=1000.0) == []  # first sighting
    assert orphans([mine, copy, never], seen, grace=60, now=1030.0) == []  # inside the grace period
    assert orphans([mine, copy, never], seen, grace=60, now=1061.0) == [copy, never]
    assert count([mine, copy, never]) == (0, 3, 3)  # all worth waiting for: heartbeats, or orphans soon
