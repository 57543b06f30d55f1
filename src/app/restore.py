"""Restoring a trained agent from its checkpoint: the model in eval mode, with the statistics it was trained on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from src.core.checkpoint import load_checkpoint
from src.core.errors import ConfigError
from src.data.costs import Costs
from src.data.market import Market


def load_policy(ckpt_path: str):
    """``(module, norm, cfg)``: the checkpoint's model in eval mode, its saved normalisation and its config."""
    try:
        ckpt = load_checkpoint(ckpt_path)
    except ConfigError as e:
        raise ConfigError(f"ckpt_path: {e}") from None
    cfg = OmegaConf.create(ckpt.get("hyper_parameters", {}).get("cfg") or {})
    if "env" not in cfg:
        raise ConfigError(f"ckpt_path: {ckpt_path} is not a tradelab checkpoint (no hyper_parameters.cfg)")
    if "paths" in cfg.env:
        raise ConfigError(f"ckpt_path: {ckpt_path} was trained on many markets; src.predict takes one-asset agents")
    norm = ckpt.get("tradelab", {}).get("norm")
    if norm is None:  # an older checkpoint: rebuild its training market, if its data file is unchanged
        from src.core.utils import build
        from src.training.state import refuse_changed_data

        trained = build(cfg.env)
        remedy = "this checkpoint predates saved statistics, so they come from that file: retrain on the new one"
        refuse_changed_data(ckpt.get("tradelab", {}).get("market", {}).get("sha256"), trained, remedy, "ckpt_path: ")
        norm = trained.norm_state()
    market = shell_market(cfg, norm)
    population = int(cfg.get("population", 1) or 1)
    if population > 1:
        from src.training.population import PopulationModule as Module
    else:
        from src.training.module import PPOModule as Module
    module = Module(OmegaConf.to_container(cfg, resolve=True), market)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval(), norm, cfg


def shell_market(cfg: DictConfig, norm: dict) -> Market:
    """A :class:`Market` with the checkpoint's shapes, costs and statistics and no bars: what building the model
    reads (the bars to act on come from the CSV)."""
    w, f = int(norm["window"]), len(norm["mean"])
    z = torch.zeros(w + 4)
    return Market(
        name=str(cfg.env.name), source=str(norm.get("source", "")), data_hash=str(norm.get("sha256", "")),
        bars=pd.DataFrame(), features=torch.zeros(w + 4, f), pre=z, post=z.clone(),
        splits={"train": (0, w + 4), "val": (w + 4, w + 4), "test": (w + 4, w + 4)}, window=w,
        costs=Costs(**OmegaConf.to_container(cfg.env.costs)), fill=str(cfg.env.fill),
        bars_per_year=float(norm["bars_per_year"]), episode_length=int(cfg.env.episode_length),
        min_trade=float(cfg.env.min_trade), min_equity=float(cfg.env.min_equity),
        norm_mean=np.asarray(norm["mean"]), norm_std=np.asarray(norm["std"]),
        position_limits=tuple(float(x) for x in cfg.env.position_limits), feature_names=tuple(norm["features"]),
    )  # fmt: skip
