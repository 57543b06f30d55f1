"""Train an agent: ``python -m src.train [group=option ...] [key=value ...]``.

Builds the market and the LightningModule from the Hydra config, trains with
validation-based checkpoint selection, evaluates the selected checkpoint once
on the test split, and writes the run's reports beside its checkpoints and
TensorBoard logs. Returns the selected model's validation Sharpe (what a
sweeper optimises; never the test figure).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError, TradelabError
from src.lit_module import PPOModule
from src.reporting import atomic_write, write_run_outputs
from src.utils import build, command_line, count_parameters, git_revision, one_line_errors


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def _callbacks(cfg: DictConfig, run_dir: Path) -> list[L.Callback]:
    """The configured callbacks, plus selection by validation Sharpe when none provides it (``callbacks=none``)."""
    bar = cfg.trainer.get("enable_progress_bar", True)  # trainer.enable_progress_bar=false drops the bar callback
    cbs = [
        build(c)
        for k, c in (cfg.get("callbacks") or {}).items()
        if c is not None and "_target_" in c and (bar or k != "progress_bar")
    ]
    if not any(isinstance(c, ModelCheckpoint) and c.monitor == "val/sharpe" for c in cbs):
        cbs.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="best",
                monitor="val/sharpe",
                mode="max",
                save_last=True,
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    return cbs


@one_line_errors
def train(cfg: DictConfig) -> float:
    """Run one training job; see the module docstring."""
    run_dir = _run_dir()
    if (run_dir / "metrics.json").exists():
        raise ConfigError(f"{run_dir} already holds a finished run (metrics.json); refusing to overwrite it")
    try:
        return _train(cfg, run_dir)
    except TradelabError:
        if not (run_dir / "metrics.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # leave nothing that looks like a run
        raise


def _train(cfg: DictConfig, run_dir: Path) -> float:
    started = time.time()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    market = build(cfg.env)
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # tests compose with hydra's own node
    resolved = OmegaConf.to_container(job_cfg, resolve=True)
    module = PPOModule(resolved, market)
    info = {
        "command": command_line(),
        "git_revision": git_revision(),
        "seed": int(cfg.seed),
        "parameters": count_parameters(module.model),
        "data": market.describe(),
        "torch": str(torch.__version__),
        "lightning": str(L.__version__),
    }
    module.hparams["run_info"] = info  # saved inside every checkpoint
    atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(resolved))
    atomic_write(run_dir / "run_info.json", json.dumps(info, indent=2) + "\n")

    logger = build(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = build(cfg.trainer, callbacks=_callbacks(cfg, run_dir), logger=logger)
    ckpt_cb = next(c for c in trainer.checkpoint_callbacks if c.monitor == "val/sharpe")
    if logger:
        logger.log_hyperparams(
            {
                "seed": cfg.seed,
                "parameters": info["parameters"],
                "data_sha256": market.data_hash,
                "git_revision": info["git_revision"],
                "cfg": json.dumps(resolved),
            }
        )
    trainer.fit(module)
    env_steps, grad_steps = module.env_steps, trainer.global_step  # before test() reloads the best checkpoint

    best = ckpt_cb.best_model_path
    if not best:  # the budget ended before the first validation: validate the final weights
        trainer.validate(module, verbose=False)
        best = str(Path(ckpt_cb.dirpath) / "best.ckpt")
        trainer.save_checkpoint(best)
    # our own checkpoint from this run; optimizer states (e.g. Shampoo preconditioners) are Python objects
    trainer.test(module, ckpt_path=best, verbose=False, weights_only=False)
    results = {"val": module.results["val"], "test": module.results["test"]}
    info.update(
        {
            "best_checkpoint": str(best),
            "env_steps": env_steps,
            "gradient_steps": grad_steps,
            "wall_seconds": round(time.time() - started, 1),
        }
    )
    atomic_write(run_dir / "run_info.json", json.dumps(info, indent=2) + "\n")
    title = f"{market.name}: agent vs buy-and-hold (selected on validation, test evaluated once)"
    table = write_run_outputs(run_dir, results, info["command"], info, title)
    print(f"\n{title}\n\n{table}\n\nrun directory: {run_dir}\n", flush=True)
    return float(results["val"]["agent"].metrics["sharpe"])


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
