"""Tomorrow's position from the latest bars: ``python -m src.predict ckpt_path=<run>/checkpoints/best.ckpt
data=data/tsla_daily.csv [position=pos.json] [--json]``.

The checkpoint is loaded weights-only (allow-listed, :func:`src.core.checkpoint.load_checkpoint`). The causal features
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

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from src.app.restore import load_policy
from src.core.checks import duration, existing_file, mandatory, timestamp
from src.core.errors import ConfigError
from src.core.utils import one_line_errors
from src.data.loader import load_ohlcv
from src.envs.market_env import Obs
from src.live.bars import POSITION_FORMAT, check_bars, drifted_weight, observation


def check_args(cfg: DictConfig) -> tuple[pd.Timestamp, dict | None]:
    """Every argument refused in one line before anything is loaded: the files exist and are readable, ``now`` is
    a timestamp, ``max_stale`` a duration, the position file a JSON object; returns ``now`` and the position."""
    mandatory(cfg)
    existing_file(cfg.ckpt_path, "ckpt_path")
    existing_file(cfg.data, "data")
    now = pd.Timestamp.now(tz="UTC") if cfg.get("now") is None else timestamp(cfg.now, "now")
    duration(cfg.get("max_stale"), "max_stale")
    if cfg.get("position") is None:
        return now, None
    path = existing_file(cfg.position, "position")
    try:
        position = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"position: {path} is not JSON ({e}); expected {POSITION_FORMAT}") from None
    return now, position


@torch.no_grad()
def predict(cfg: DictConfig) -> dict:
    now, position = check_args(cfg)
    module, norm, train_cfg = load_policy(cfg.ckpt_path)
    bars = load_ohlcv(cfg.data, max_gap=train_cfg.env.get("max_gap"))
    end = check_bars(bars, cfg.data, norm, now, cfg.get("max_stale"), bool(cfg.get("allow_other_ticker")))
    current = 0.0 if position is None else drifted_weight(position, bars, cfg.data)
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
