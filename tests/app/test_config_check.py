"""Up-front configuration checks (src/app/config_check.py): what they refuse, with which line, and what they let pass."""

from __future__ import annotations

import pytest

from src.app.config_check import check_run, hydra_choices
from src.core.checks import number
from src.core.errors import ConfigError
from tests.conftest import TINY, compose_cfg


def test_number_bounds_and_types():
    assert number(3, "k", integer=True, low=1) == 3 and isinstance(number(2.0, "k", integer=True), int)
    for value, kwargs, message in [
        ("abc", {}, "k must be a finite number, got 'abc'"),
        (True, {}, "k must be a finite number, got True"),  # a bool is not a number here
        (float("nan"), {}, "k must be a finite number"),
        (2.5, {"integer": True}, "k must be an integer, got 2.5"),
        (0.0, {"low": 0.0, "low_open": True}, "k must be > 0, got 0.0"),
        (1.0, {"low": 0.0, "high": 1.0, "high_open": True}, "k must be >= 0 and < 1, got 1.0"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            number(value, "k", **kwargs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.gamma=abc"], "algo.gamma must be a finite number, got 'abc'"),
        (["model.d_model=16.5"], "model.d_model must be an integer, got 16.5"),
        (["optimizer=muon", "optimizer.momentum=1.0"], "optimizer.momentum must be >= 0 and < 1, got 1.0"),
        (["optimizer=shampoo", "optimizer.block_size=0"], "optimizer.block_size must be >= 1, got 0"),
        (["scheduler.min_ratio=2"], "scheduler.min_ratio must be >= 0 and <= 1, got 2"),
        (["lr_scale=0"], "lr_scale must be > 0, got 0"),
        (["threads=0"], "threads must be >= 1, got 0"),
        (["trainer.val_check_interval=0"], "trainer.val_check_interval must be >= 1, got 0"),
        (
            ["trainer.max_steps=-1", "trainer.max_time=00:00:01:00"],  # the schedules need a step budget (issue 19)
            "trainer.max_steps=-1: the learning-rate schedule, replay's beta and every progress-based setting need "
            "a budget of gradient steps; set trainer.max_steps (trainer.max_time can still stop a run earlier)",
        ),
    ],
)
def test_check_run_refuses_with_the_key(tmp_path, overrides, message):
    cfg = compose_cfg([*TINY, *overrides], tmp_path)
    with pytest.raises(ConfigError) as e:
        check_run(cfg, hydra_choices())
    assert str(e.value) == message


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["trainer.max_steps=8", "trainer.max_time=00:00:01:00"],  # a step budget and a wall-clock one
        ["env.costs.cash_rate_bps=-50"],  # negative deposit rates are real
        ["optimizer=sgd", "optimizer.weight_decay=0"],
        ["env.window=12.0"],  # a whole float is an integer
    ],
)
def test_check_run_lets_valid_values_pass(tmp_path, overrides):
    check_run(compose_cfg([*TINY, *overrides], tmp_path), hydra_choices())
