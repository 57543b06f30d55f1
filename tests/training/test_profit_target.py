"""The profitability target: stops when validation meets every target, adjusts when stuck, survives resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from src.rl.ppo import PPOConfig
from src.training.profit_target import ProfitTarget


def _fake(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    saved = []
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        global_step=0,
        should_stop=False,
        optimizers=[opt],
        lr_scheduler_configs=[SimpleNamespace(scheduler=sched)],
        default_root_dir=str(tmp_path),
        save_checkpoint=saved.append,
    )
    module = SimpleNamespace(ppo=PPOConfig(), results={})
    return trainer, module, saved


def _validate(cb, trainer, module, sharpe, total_return=0.0, max_drawdown=0.1):
    trainer.global_step += 16
    module.results["val"] = {
        "agent": SimpleNamespace(metrics={"sharpe": sharpe, "total_return": total_return, "max_drawdown": max_drawdown})
    }
    cb.on_validation_end(trainer, module)


def test_stops_at_the_first_validation_meeting_every_target(tmp_path):
    trainer, module, saved = _fake(tmp_path)
    cb = ProfitTarget(sharpe=1.0, total_return=0.05, max_drawdown=0.2)
    _validate(cb, trainer, module, 1.5, 0.10, 0.25)  # drawdown too deep
    _validate(cb, trainer, module, 1.5, 0.04, 0.10)  # return too small
    _validate(cb, trainer, module, 0.9, 0.10, 0.10)  # Sharpe too low
    assert not trainer.should_stop and not saved
    _validate(cb, trainer, module, 1.2, 0.08, 0.15)
    assert trainer.should_stop and saved == [str(tmp_path / "checkpoints" / "target.ckpt")]
    assert cb.reached == {"step": 64, "sharpe": 1.2, "total_return": 0.08, "max_drawdown": 0.15, "adjustments": 0}
    assert cb.checkpoint == saved[0]


def test_adjusts_when_stuck_in_the_stated_order_and_at_most_max_adjustments(tmp_path):
    trainer, module, _ = _fake(tmp_path)
    opt, sched = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
    p = module.ppo
    ent0, clip0, epochs0 = p.ent_coef, p.clip_coef, p.update_epochs
    cb = ProfitTarget(patience=2, max_adjustments=4)
    _validate(cb, trainer, module, 0.1)
    _validate(cb, trainer, module, 0.2)  # improving
    _validate(cb, trainer, module, 0.1)
    assert not cb.adjustments
    _validate(cb, trainer, module, 0.1)  # best (0.2) now 2 checks old
    assert len(cb.adjustments) == 1 and cb.adjustments[0]["step"] == 64
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4) and sched.base_lrs == [pytest.approx(5e-4)]
    assert p.ent_coef == pytest.approx(ent0 * 1.2) and (p.clip_coef, p.update_epochs) == (clip0, epochs0)
    for _ in range(3):  # patience restarts after an adjustment: 3 more flat checks
        _validate(cb, trainer, module, 0.1)
    assert len(cb.adjustments) == 2 and opt.param_groups[0]["lr"] == pytest.approx(7.5e-4)
    for _ in range(3):
        _validate(cb, trainer, module, 0.1)
    assert len(cb.adjustments) == 3
    assert p.clip_coef == pytest.approx(clip0 + 0.05) and p.update_epochs == epochs0 + 1
    assert p.ent_coef == pytest.approx(ent0 * 1.2**3)
    for _ in range(3):
        _validate(cb, trainer, module, 0.1)
    assert len(cb.adjustments) == 4  # no augmentation or curriculum configured here: said, not pretended
    assert "curriculum: none configured; augmentation: none configured" in cb.adjustments[3]["changes"]
    for _ in range(10):
        _validate(cb, trainer, module, 0.1)
    assert len(cb.adjustments) == 4  # max_adjustments
    assert not trainer.should_stop

    # resume: the optimizer's lr comes back with its own state; the PPO settings from the callback's
    state = cb.state_dict()
    again = ProfitTarget(patience=2, max_adjustments=4)
    again.load_state_dict(state)
    fresh = SimpleNamespace(ppo=PPOConfig())
    again.on_train_start(None, fresh)
    assert (fresh.ppo.ent_coef, fresh.ppo.clip_coef, fresh.ppo.update_epochs) == (
        p.ent_coef,
        p.clip_coef,
        p.update_epochs,
    )
    assert again.summary()["adjustments"] == cb.adjustments


# ---- through train(): adjustments reach the live run, the report and a resumed run ----
import json  # noqa: E402

from src.core.checkpoint import load_checkpoint  # noqa: E402
from src.train import train  # noqa: E402
from tests.conftest import TINY, compose_cfg  # noqa: E402
from tests.helpers import Killed  # noqa: E402

STUCK = [  # an unreachable target, a frozen policy (lr ~ 0) and patience 1: adjustments happen; curve fit on
    "target=profitable",
    "scheduler=constant",
    "lr_scale=1e-6",
    "callbacks.profit_target.min_delta=0.01",
    "callbacks=sweep",
    "trainer.max_steps=54",
    "trainer.val_check_interval=1",
    "callbacks.profit_target.sharpe=100",
    "callbacks.profit_target.patience=1",
    "callbacks.profit_target.max_adjustments=4",
    "callbacks.curve_fit_stop.min_points=4",
    "callbacks.curve_fit_stop.threshold=-100",
]


def _train(run, *extra, resume=False):
    run.mkdir(parents=True, exist_ok=True)
    return train(compose_cfg([*TINY, *STUCK, *extra] if not resume else [f"resume={run}"], run))


def test_adjustments_reach_the_report_and_survive_a_kill(tmp_path):
    full = tmp_path / "full"
    _train(full)
    info = json.loads((full / "run_info.json").read_text())
    adj = info["profit_target"]["adjustments"]
    assert len(adj) == 4 and info["profit_target"]["reached"] is None
    # the live optimizer's lr (constant schedule, base 3e-4 x lr_scale 1e-6): x0.5, x1.5, x0.5, x1.5
    base = 3e-4 * 1e-6
    assert [a["lr"] for a in adj] == pytest.approx([0.5 * base, 0.75 * base, 0.375 * base, 0.5625 * base])
    assert [a["ent_coef"] for a in adj] == pytest.approx([0.001 * 1.2**k for k in (1, 2, 3, 4)])
    assert adj[2]["update_epochs"] == 3 and adj[2]["clip_coef"] == pytest.approx(0.25)  # TINY: 2 epochs, clip .2
    # the 4th switches on the curriculum and augmentation that conf/target/profitable.yaml composes
    assert "curriculum adaptive on" in adj[3]["changes"] and "augmentation on (jitter, " in adj[3]["changes"]
    assert info["curve_fit_stop"]["checks"] >= 1 and info["curve_fit_stop"]["stopped"] is None
    last = load_checkpoint(full / "checkpoints" / "last.ckpt")["tradelab"]
    assert "augmented" in last["env"] and last["switched_augmentation"]["transforms"]["mixup"]["p"] == 0.25
    report = (full / "report.md").read_text()
    assert "## Verdict" in report and "## Profitability target" in report and "Not met within the step budget" in report
    assert "Adjustments made: 4 of at most 4." in report and "## Curriculum" in report
    rows = [r for r in report.splitlines() if r.startswith(("| 1 |", "| 2 |", "| 3 |", "| 4 |"))]
    assert len(rows) == 4 and "lr x0.5; ent_coef x1.2" in rows[0] and "clip +0.05, update_epochs +1" in rows[2]
    assert "## Curve-fit early stopping" in report and "Not stopped." in report

    # killed after the 4th adjustment: the resumed run rebuilds the augmented env and the live curriculum
    # TINY: 4 gradient steps per iteration, 6 after the 3rd adjustment's extra epoch: the 4th is at iteration 8
    assert [a["step"] for a in adj] == [8, 16, 24, 36]
    iteration = 9
    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        _train(
            cut,
            "+callbacks.brk._target_=tests.helpers.BreakAt",
            f"+callbacks.brk.at={iteration}",
            "+callbacks.brk.signal=KILL",
        )
    saved = load_checkpoint(cut / "checkpoints" / "last.ckpt")
    assert any("ProfitTarget" in k for k in saved["callbacks"])  # the callback's state is in the checkpoint
    assert "switched_augmentation" in saved["tradelab"]
    _train(cut, resume=True)
    assert (cut / "metrics.json").read_text() == (full / "metrics.json").read_text()
    assert (cut / "val_history.csv").read_text() == (full / "val_history.csv").read_text()
    again = json.loads((cut / "run_info.json").read_text())
    assert again["profit_target"] == info["profit_target"] and again["curve_fit_stop"] == info["curve_fit_stop"]
