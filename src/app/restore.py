"""Restoring a trained agent from its checkpoint: the one loader behind ``src.evaluate``, ``src.predict``,
``src.paper`` and ``src.export`` (the model in eval mode, with the statistics it was trained on)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from src.app.kinds import kind_of
from src.core.checkpoint import load_checkpoint
from src.core.errors import ConfigError
from src.core.utils import build
from src.data.costs import Costs
from src.data.market import Market
from src.training.state import refuse_changed_data


def read_checkpoint(ckpt_path: str) -> tuple[dict, DictConfig]:
    """The checkpoint (loaded weights-only with an allow-list: a tampered file is refused) and the resolved config
    it was trained with, or one line naming ``ckpt_path``."""
    try:
        ckpt = load_checkpoint(ckpt_path)
    except ConfigError as e:
        raise ConfigError(f"ckpt_path: {e}") from None
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or "env" not in cfg:
        raise ConfigError(f"ckpt_path: {ckpt_path} is not a tradelab checkpoint (no hyper_parameters.cfg)")
    return ckpt, OmegaConf.create(cfg)


def restore(ckpt: dict, cfg: DictConfig, market):
    """The checkpoint's LightningModule on ``market`` (its kind's, :mod:`src.app.kinds`), weights loaded, in eval
    mode: the one place a trained agent is rebuilt."""
    population, kind = int(cfg.get("population", 1) or 1), kind_of(cfg.env)
    kind.refuse(cfg)  # what its kind cannot train, as when it was trained (a hand-edited checkpoint's config too)
    module = kind.module_class(population)(OmegaConf.to_container(cfg, resolve=True), market)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


def load_policy(ckpt_path: str, command: str = "src.predict"):
    """``(module, norm, cfg)`` for acting on fresh bars (``src.predict``, ``src.paper``, ``src.export``): the
    checkpoint's model on a market with its saved normalisation and no bars, that normalisation, and its config."""
    ckpt, cfg = read_checkpoint(ckpt_path)
    kind = kind_of(cfg.env)
    if not kind.acts_live:
        raise ConfigError(f"ckpt_path: {ckpt_path} was trained on a {kind.name} of markets; {command} takes "
                          "one-asset agents")  # fmt: skip
    norm = ckpt.get("tradelab", {}).get("norm")
    if norm is None:  # an older checkpoint: rebuild its training market, if its data file is unchanged
        trained = build(cfg.env)
        remedy = "this checkpoint predates saved statistics, so they come from that file: retrain on the new one"
        refuse_changed_data(ckpt.get("tradelab", {}).get("market", {}).get("sha256"), trained, remedy, "ckpt_path: ")
        norm = trained.norm_state()
    return restore(ckpt, cfg, shell_market(cfg, norm)), norm, cfg


def load_agent(ckpt_path: str, env_cfg: DictConfig | None = None):
    """The checkpoint's module on a whole market, for re-evaluating a split (``src.evaluate``): the checkpoint's
    env, or ``env_cfg`` with the model's window and position limits.

    On the checkpoint's own env the data file must be the one it was trained on (its SHA-256): the
    normalisation statistics and the splits come from that file, so a changed file is refused.
    """
    ckpt, train_cfg = read_checkpoint(ckpt_path)
    if int(train_cfg.get("population", 1) or 1) > 1:
        raise ConfigError(f"ckpt_path: {ckpt_path} holds a population of {train_cfg.population} members; its run "
                          "directory's report.md and metrics.json have every member's test (src.evaluate reads "
                          "single runs)")  # fmt: skip
    kind = kind_of(train_cfg.env)
    if not kind.evaluates:  # one ticker rebuilt alone would get its own split: bars the universe trained on
        raise ConfigError(f"ckpt_path: {ckpt_path} was trained on a {kind.name}; re-evaluating it is not supported "
                          f"yet (its run's report.md has the {kind.name}'s single test)")  # fmt: skip
    # another env keeps the model's window and position limits (the policy's support): it was built for them
    keep = {"window": train_cfg.env.window, "position_limits": train_cfg.env.position_limits}
    env = OmegaConf.merge(env_cfg, keep) if env_cfg else train_cfg.env
    market = build(env)
    trained_on = ckpt.get("tradelab", {}).get("market", {})  # the checkpoint's data: its hash and split dates
    if not env_cfg:  # another env is other data on purpose
        remedy = "its splits and normalisation came from the old file; name env=... to test it on other data"
        refuse_changed_data(trained_on.get("sha256"), market, remedy, prefix="ckpt_path: ")
    module = restore(ckpt, train_cfg, market)
    module.trained_on = trained_on
    return module


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
