"""Re-evaluate a saved agent: ``python -m src.evaluate ckpt_path=<run>/checkpoints/best.ckpt split=test``.

Any split (``train``, ``val``, ``test``) and any env (``env=btc``) can be
given; without ``env=`` the checkpoint's own env config is used. The window
length always comes from the checkpoint (the model was built for it). Another
env is normalised with *its own* training split's statistics. Writes the same
report files as a training run into a new directory under ``outputs/eval/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src.core.checkpoint import load_checkpoint
from src.core.errors import ConfigError
from src.core.utils import build, command_line, git_revision, one_line_errors
from src.data.market import SPLITS
from src.evaluation.verdict import verdict
from src.evaluation.walk import evaluate_split
from src.reports.run import write_run_outputs
from src.training.module import PPOModule
from src.training.state import refuse_changed_data


def load_agent(ckpt_path: str, env_cfg: DictConfig | None = None) -> PPOModule:
    """Load a checkpoint with its market (the checkpoint's env, or ``env_cfg`` with the same window).

    On the checkpoint's own env the data file must be the one it was trained on (its SHA-256): the
    normalisation statistics and the splits come from that file, so a changed file is refused.
    """
    try:
        ckpt = load_checkpoint(ckpt_path)  # weights_only with an allow-list: a tampered file is refused
    except ConfigError as e:
        raise ConfigError(f"ckpt_path: {e}") from None
    try:
        cfg = ckpt["hyper_parameters"]["cfg"]
    except (KeyError, TypeError):
        raise ConfigError(f"ckpt_path: {ckpt_path} is not a tradelab checkpoint (no hyper_parameters.cfg)") from None
    train_cfg = OmegaConf.create(cfg)
    if int(train_cfg.get("population", 1) or 1) > 1:
        raise ConfigError(f"ckpt_path: {ckpt_path} holds a population of {train_cfg.population} members; its run "
                          "directory's report.md and metrics.json have every member's test (src.evaluate reads "
                          "single runs)")  # fmt: skip
    if "paths" in train_cfg.env:  # one ticker rebuilt alone would get its own split: bars the universe trained on
        kind = "portfolio" if "mode" in train_cfg.env else "universe"
        raise ConfigError(f"ckpt_path: {ckpt_path} was trained on a {kind}; re-evaluating it is not supported yet "
                          f"(its run's report.md has the {kind}'s single test)")  # fmt: skip
    # another env keeps the model's window and position limits (the policy's support): it was built for them
    keep = {"window": train_cfg.env.window, "position_limits": train_cfg.env.position_limits}
    env = OmegaConf.merge(env_cfg, keep) if env_cfg else train_cfg.env
    module = PPOModule(cfg, build(env))
    trained_on = ckpt.get("tradelab", {}).get("market", {})  # the checkpoint's data: its hash and split dates
    if not env_cfg:  # another env is other data on purpose
        remedy = "its splits and normalisation came from the old file; name env=... to test it on other data"
        refuse_changed_data(trained_on.get("sha256"), module.market, remedy, prefix="ckpt_path: ")
    module.load_state_dict(ckpt["state_dict"])
    module.trained_on = trained_on
    return module.eval()


def seen_in_training(trained_on: dict, market, split: str) -> bool:
    """Whether ``split`` of ``market`` overlaps the bars the checkpoint was trained or selected on: the same
    data (SHA-256) and dates within its train or validation period, whatever the env is called."""
    if trained_on.get("sha256") != market.data_hash or "train" not in trained_on or "val" not in trained_on:
        return False
    a, b = market.splits[split]
    first, last = market.bars.index[a], market.bars.index[b - 1]
    seen_first, seen_last = pd.Timestamp(trained_on["train"]["first"]), pd.Timestamp(trained_on["val"]["last"])
    return first <= seen_last and last >= seen_first


@one_line_errors
def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; returns the metrics payload."""
    if cfg.split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {cfg.split!r}")
    module = load_agent(cfg.ckpt_path, cfg.get("env"))
    market = module.market
    results = {cfg.split: evaluate_split(market, cfg.split, module.policy())}
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    info = {
        "command": command_line(),
        "checkpoint": str(cfg.ckpt_path),
        "git_revision": git_revision(),
        "data": market.describe(),
    }
    title = f"{market.name}: re-evaluation of {Path(cfg.ckpt_path).name} on the {cfg.split} split"
    # in sample: bars the checkpoint was trained or selected on (the same file, overlapping dates), by any name
    in_sample = seen_in_training(getattr(module, "trained_on", {}), market, cfg.split)
    judged = verdict(results, market.bars_per_year, bars_per_day=market.bars_per_day, in_sample=in_sample)
    table = write_run_outputs(run_dir, results, info["command"], info, title, judged)
    print(f"\n{title}\n\n{table}\n\nrun directory: {run_dir}\n", flush=True)
    return json.loads((run_dir / "metrics.json").read_text())


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
