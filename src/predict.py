"""Tomorrow's position from the latest bars: ``python -m src.predict ckpt_path=<run>/checkpoints/best.ckpt
data=data/tsla_daily.csv [position=pos.json] [--json]``.

The checkpoint is loaded weights-only (allow-listed, :func:`src.checkpoint.load_checkpoint`). The causal features
are recomputed on the CSV and normalised with the checkpoint's **own** training-split statistics (saved in the
checkpoint: a longer file does not move them). The CSV must have the checkpoint's bar size and ticker (its file
name up to the first ``_``; ``allow_other_ticker=true`` to apply an agent to another ticker on purpose). The last
bar must be complete (``now`` at or after its end: its timestamp plus the file's bar interval) and not stale (its
end at most ``max_stale`` before ``now``; ``max_stale=null`` to accept any age, e.g. the shipped historical file).

Prints, for the open after the last complete bar: the target weight (the deterministic policy), the current weight
(from ``position``, a JSON ``{"weight": w, "as_of": "<date of a bar>"}``, drifted with the file's closes to the
last bar; flat without one), and the trade after the no-trade band (``env.min_trade``); for an ensemble every
member's weight, for a population every member's and their spread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from src.checkpoint import load_checkpoint
from src.data.costs import Costs
from src.data.features import compute_features
from src.data.loader import load_ohlcv
from src.data.market import NORM_CLIP, Market, infer_calendar, local_time
from src.data.universe import ticker_name
from src.envs.market_env import Obs
from src.errors import ConfigError, DataError
from src.utils import one_line_errors

MIN_HISTORY = 200  # rows: past ~100 the features' EMA seeds are below 0.001 training std (measured), past 200 nil


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
        from src.lit_state import refuse_changed_data
        from src.utils import build

        trained = build(cfg.env)
        remedy = "this checkpoint predates saved statistics, so they come from that file: retrain on the new one"
        refuse_changed_data(ckpt.get("tradelab", {}).get("market", {}).get("sha256"), trained, remedy, "ckpt_path: ")
        norm = trained.norm_state()
    market = shell_market(cfg, norm)
    population = int(cfg.get("population", 1) or 1)
    if population > 1:
        from src.lit_population import PopulationModule as Module
    else:
        from src.lit_module import PPOModule as Module
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


def check_bars(bars: pd.DataFrame, path: str, norm: dict, now: pd.Timestamp, max_stale, other_ticker: bool):
    """The last complete bar's end, after refusing a short history, another bar size or ticker, an incomplete or a
    stale bar."""
    if len(bars) < MIN_HISTORY:
        raise DataError(f"{path}: {len(bars)} rows; the features' exponential averages need at least {MIN_HISTORY} "
                        "bars of history to match training's (a shorter file observes other values)")  # fmt: skip
    step = pd.Series(bars.index).diff().median()
    if "bar_seconds" in norm:  # the training file's median interval (a set env.bars_per_year cannot mislead it)
        if abs(step.total_seconds() - norm["bar_seconds"]) > 0.01 * norm["bar_seconds"]:
            raise DataError(f"{path}: bars every {step}, the checkpoint was trained on bars every "
                            f"{pd.Timedelta(seconds=norm['bar_seconds'])} (another bar size)")  # fmt: skip
    else:
        per_year, _ = infer_calendar(local_time(bars), path)
        if abs(per_year - float(norm["bars_per_year"])) > 1e-6 * per_year:
            raise DataError(f"{path}: {per_year:g} bars a year, the checkpoint was trained on "
                            f"{float(norm['bars_per_year']):g} (another bar size)")  # fmt: skip
    trained = ticker_name(norm.get("source", "")) if norm.get("source") else None
    if trained and ticker_name(path) != trained and not other_ticker:
        raise DataError(f"{path}: ticker {ticker_name(path)!r}, the checkpoint was trained on {trained!r}; "
                        "allow_other_ticker=true to apply it anyway")  # fmt: skip
    end = bars.index[-1] + step
    if now < end:
        raise DataError(f"{path}: the last bar ({bars.index[-1]}) is incomplete until {end} (now {now}); "
                        "wait for it, or drop the partial row")  # fmt: skip
    if max_stale is not None and now - end > pd.Timedelta(max_stale):
        raise DataError(f"{path}: the last bar ({bars.index[-1]}) ended {now - end} before now ({now}), over "
                        f"max_stale={max_stale}: refresh the file, or max_stale=null to use it anyway")  # fmt: skip
    return end


def normalised_features(bars: pd.DataFrame, norm: dict) -> torch.Tensor:
    """(T, F): every bar's causal features, normalised with the checkpoint's training statistics (as
    :func:`src.data.market.build_market` normalises its own)."""
    x = compute_features(bars).to_numpy(np.float64)
    z = np.clip((x - np.asarray(norm["mean"])) / np.asarray(norm["std"]), -NORM_CLIP, NORM_CLIP)
    return torch.as_tensor(z, dtype=torch.float32)


def observation(bars: pd.DataFrame, norm: dict, path: str) -> torch.Tensor:
    """(1, window, F): the last ``window`` feature rows, normalised with the checkpoint's statistics."""
    w = int(norm["window"])
    z = normalised_features(bars, norm)[-w:]
    if len(bars) < w + 35 or not torch.isfinite(z).all():
        raise DataError(f"{path}: {len(bars)} rows are too few for a {w}-bar window after the feature warm-up")
    return z[None]


def drifted_weight(position: dict, bars: pd.DataFrame, path: str) -> float:
    """The weight of ``position`` (held at the close of its ``as_of`` bar), drifted with the closes to the last bar."""
    try:
        w, as_of = float(position["weight"]), pd.Timestamp(position["as_of"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError('position: expected {"weight": <float>, "as_of": "<date of a bar>"}') from None
    close = bars["close"].to_numpy()
    g = close[-1] / close[bar_at(bars, as_of, path, "position as_of")]  # the asset's growth since; cash stays
    return float(w * g / (1 + w * (g - 1)))


def bar_at(bars: pd.DataFrame, when, path: str, what: str) -> int:
    """The row of the bar at ``when``: its exact timestamp, or a date that names one bar of the file."""
    ts = pd.Timestamp(when)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if ts in bars.index:
        return int(bars.index.get_loc(ts))
    same = (local_time(bars).normalize() == ts.tz_localize(None).normalize()).nonzero()[0]
    if len(same) == 1 and ts == ts.normalize():
        return int(same[0])
    raise DataError(f"{path}: {what} {when} is not a bar of the file (give its timestamp)")


@torch.no_grad()
def predict(cfg: DictConfig) -> dict:
    module, norm, train_cfg = load_policy(cfg.ckpt_path)
    bars = load_ohlcv(cfg.data, max_gap=train_cfg.env.get("max_gap"))
    now = pd.Timestamp.now(tz="UTC") if cfg.get("now") is None else pd.Timestamp(cfg.now)
    now = now.tz_localize("UTC") if now.tzinfo is None else now
    end = check_bars(bars, cfg.data, norm, now, cfg.get("max_stale"), bool(cfg.get("allow_other_ticker")))
    current = 0.0 if cfg.get("position") is None else drifted_weight(json.loads(Path(cfg.position).read_text()),
                                                                      bars, cfg.data)  # fmt: skip
    market = observation(bars, norm, cfg.data)
    k = len(getattr(module.model, "members", [])) if hasattr(module.model, "members") else 0
    size = int(getattr(module.model, "size", 1))  # a population's members each act on their own row
    obs = Obs(market.expand(size, -1, -1), torch.full((size, 1), current))
    dist, _ = module.model(obs)
    out = {"checkpoint": str(cfg.ckpt_path), "data": str(cfg.data), "last_bar": str(bars.index[-1]),
           "decided_at": str(end), "fill": "the next open" if module.market.fill == "open" else "this close",
           "current_weight": current, "position_given": cfg.get("position") is not None}  # fmt: skip
    if size > 1:
        members = dist.mean.reshape(-1).tolist()
        out["members"] = members
        out["target_weight"] = float(np.mean(members))
        out["member_spread"] = float(np.std(members))
    else:
        out["target_weight"] = float(dist.mean.reshape(-1)[0])
        if k:
            members = dist.member_means[:, 0].tolist()
            out["members"], out["member_spread"] = members, float(np.std(members))
    diff = out["target_weight"] - current
    out["trade"] = diff if abs(diff) >= max(float(train_cfg.env.min_trade), 1e-12) else 0.0
    return out


def describe(out: dict) -> str:
    flat = "" if out["position_given"] else " (no position file: flat)"
    band = " (inside the no-trade band)" if out["trade"] == 0 else ""
    lines = [f"last complete bar: {out['last_bar']} (decision at its end, filled at {out['fill']})",
             f"target weight: {out['target_weight']:+.4f}", f"current weight: {out['current_weight']:+.4f}{flat}",
             f"trade: {out['trade']:+.4f}{band}"]  # fmt: skip
    if "members" in out:
        lines.append(f"members: {', '.join(f'{m:+.3f}' for m in out['members'])} (spread {out['member_spread']:.4f})")
    return "\n".join(lines)


@one_line_errors
def run(cfg: DictConfig) -> dict:
    out = predict(cfg)
    print(json.dumps(out, indent=2) if cfg.get("json") else describe(out), flush=True)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    if "--json" in sys.argv:  # the script form of json=true
        sys.argv = [a for a in sys.argv if a != "--json"] + ["json=true"]
    main()
