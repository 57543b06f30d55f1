"""Runs saved before src/ was split into packages name the old modules in their configs; they still resume,
evaluate, predict and paper-trade (the rename table, :mod:`src.core.renames`)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from src.core.checkpoint import load_checkpoint
from src.core.renames import MOVED, renamed, renamed_targets
from src.evaluate import evaluate
from src.paper import connect, ledgers, step_account
from src.predict import predict
from src.train import train
from tests.conftest import TINY, compose_cfg, write_bars
from tests.helpers import LONGER, Killed

# Every _target_ under conf/ at revision ac7cdc1, the last one before the move (written out here, not derived
# from the table: the test must fail if the table forgets one).
BEFORE = [
    "src.augment.Augmenter",
    "src.augment.CutMix",
    "src.augment.Jitter",
    "src.augment.MagnitudeWarp",
    "src.augment.MixUp",
    "src.augment.TimeWarp",
    "src.augment.WindowSlice",
    "src.callbacks.CurveFitEarlyStopping",
    "src.callbacks.IterationProgressBar",
    "src.callbacks.ResourceMonitor",
    "src.curriculum.Curriculum",
    "src.data.load_market",
    "src.data.planted.planted_suite_market",
    "src.data.portfolio.load_portfolio",
    "src.data.synthetic.planted_market",
    "src.data.synthetic_market",
    "src.data.universe.load_universe",
    "src.loggers.many",
    "src.loggers.mlflow",
    "src.loggers.wandb",
    "src.models.ensemble.EnsembleConfig",
    "src.models.mlp_actor_critic",
    "src.models.transformer_actor_critic",
    "src.optim.factories.adamw",
    "src.optim.factories.muon",
    "src.optim.factories.sgd",
    "src.optim.factories.shampoo",
    "src.optim.factories.soap",
    "src.profit_target.ProfitTarget",
    "src.rl.grpo.GRPOConfig",
    "src.rl.her.Hindsight",
    "src.rl.ppo.PPOConfig",
    "src.rl.rnd.RND",
    "src.rl.sil.SelfImitation",
]


@pytest.mark.parametrize("old", BEFORE)
def test_every_target_named_before_the_move_resolves(old):
    assert callable(get_object(renamed(old)))


def test_nested_targets_are_renamed_in_plain_and_config_nodes():
    plain = {"augmentation": {"_target_": "src.augment.Augmenter", "transforms": [{"_target_": "src.augment.Jitter"}]}}
    renamed_targets(plain)
    assert plain["augmentation"]["_target_"] == "src.data.augment.Augmenter"
    assert plain["augmentation"]["transforms"][0]["_target_"] == "src.data.augment.Jitter"
    node = OmegaConf.create({"cb": {"_target_": "src.callbacks.ResourceMonitor", "x": "${y}"}, "y": 1})
    OmegaConf.set_readonly(node, True)
    renamed_targets(node.cb)  # a child node of a read-only config, its interpolation kept
    assert node.cb._target_ == "src.training.callbacks.ResourceMonitor" and node.cb.x == 1
    assert renamed("src.rl.ppo.PPOConfig") == "src.rl.ppo.PPOConfig"  # what did not move stays


def _old_names(text: str) -> str:
    """``text`` with every moved module written as it was before the move."""
    for old, new in sorted(MOVED.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(new + ".", old + ".")
    return text


def _age(ckpt) -> None:
    """Rewrite a checkpoint's saved config as code before the move wrote it."""
    saved = torch.load(ckpt, weights_only=False)
    cfg = json.loads(_old_names(json.dumps(saved["hyper_parameters"]["cfg"])))
    saved["hyper_parameters"]["cfg"] = cfg
    torch.save(saved, ckpt)


def test_a_run_saved_with_the_old_names_resumes_evaluates_predicts_and_paper_trades(tmp_path):
    from src.data.synthetic import generate_bars

    bars = generate_bars(n_bars=400, seed=3)
    csv = write_bars(tmp_path / "abc_daily.csv", bars)
    run = tmp_path / "run"
    run.mkdir()
    small = [o for o in TINY if not o.startswith("env")] + ["env.window=8", "env.episode_length=32", "env.min_trade=0"]
    brk = ["+callbacks.brk._target_=tests.helpers.BreakAt", "+callbacks.brk.at=3", "+callbacks.brk.signal=KILL"]
    extra = ["env=csv", f"env.path={csv}", "augmentation=jitter", "curriculum=linear", "logger=many"]
    with pytest.raises(Killed):
        train(compose_cfg([*small, *LONGER, *extra, *brk], run))
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(_old_names(config))
    _age(run / "checkpoints" / "last.ckpt")
    for old in ("src.augment.Augmenter", "src.curriculum.Curriculum", "src.callbacks.ResourceMonitor", "src.loggers"):
        assert old in (run / "config.yaml").read_text()
        assert old in json.dumps(load_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["cfg"])

    train(compose_cfg([f"resume={run}"], run))  # resumes from the old-named config and checkpoint
    trained = json.loads((run / "metrics.json").read_text())["test"]["agent"]

    best = run / "checkpoints" / "best.ckpt"
    _age(best)
    assert "src.augment.Jitter" in json.dumps(load_checkpoint(best)["hyper_parameters"]["cfg"])
    (tmp_path / "eval").mkdir()
    again = evaluate(compose_cfg([f"ckpt_path={best}", "split=test"], tmp_path / "eval", config_name="evaluate"))
    assert again["test"]["agent"] == pytest.approx(trained)
    base = {"position": None, "max_stale": None, "allow_other_ticker": False, "json": False}
    out = predict(OmegaConf.create({"ckpt_path": str(best), "data": csv, "now": "2100-01-01", **base}))
    assert -1.0 <= out["target_weight"] <= 1.0
    acct = tmp_path / "acct.db"
    paper = {"account": str(acct), "ckpt_path": str(best), "data": csv, "now": "2100-01-01", "max_stale": None,
             "command": "step", "from": str(bars.index[-10].date()), "allow_other_ticker": False}  # fmt: skip
    written = step_account(OmegaConf.create(paper))  # the bars after the opening decision, one row each
    assert written == 9 and len(ledgers(connect(str(acct)))["agent"]) >= 9
