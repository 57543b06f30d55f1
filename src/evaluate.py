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
from omegaconf import DictConfig

from src.app.kinds import ASSET
from src.app.restore import load_agent
from src.app.run import remove_partial_run
from src.core.checks import existing_file, mandatory
from src.core.errors import ConfigError, TradelabError
from src.core.utils import command_line, git_revision, one_line_errors
from src.data.market import SPLITS
from src.evaluation.verdict import verdict
from src.evaluation.walk import evaluate_split
from src.reports.run import write_run_outputs


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
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; returns the metrics payload. A refusal leaves nothing of the
    output directory Hydra made for it (its ``.hydra/`` and ``evaluate.log``)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return _evaluate(cfg, run_dir)
    except TradelabError:
        if not (run_dir / "metrics.json").exists():
            remove_partial_run(run_dir, (".hydra", "evaluate.log"))
        raise


def _evaluate(cfg: DictConfig, run_dir: Path) -> dict:
    mandatory(cfg)
    if cfg.split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {cfg.split!r}")
    existing_file(cfg.ckpt_path, "ckpt_path")
    module = load_agent(cfg.ckpt_path, cfg.get("env"))
    market = module.market
    results = {cfg.split: evaluate_split(market, cfg.split, module.policy())}
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
    table = write_run_outputs(run_dir, results, info["command"], info, title, judged, baselines=ASSET.baselines)
    print(f"\n{title}\n\n{table}\n\nrun directory: {run_dir}\n", flush=True)
    return json.loads((run_dir / "metrics.json").read_text())


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
