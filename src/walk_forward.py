"""Walk-forward evaluation: ``python -m src.walk_forward [walk_forward.folds=K] [any train override]``.

The last ``walk_forward.oos_fraction`` of the bars (after the feature warm-up) is cut into K consecutive
test periods of equal length. Fold k trains on every bar before its validation period (the
``val_bars`` just before its test period), selects on that validation period and evaluates its test
period once, exactly as ``src.train`` does for one run, with normalisation from its own training bars.
The K test periods are stitched into one out-of-sample equity curve and compared with buy-and-hold over
the same bars (re-entered at each fold's start, paying the entry cost each time, as the folds do).
Writes ``walk_forward.md`` (per-fold table, stitched metrics, verdict), ``walk_forward.json``,
``walk_forward.png`` and one run directory per fold under the walk-forward directory.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from src.app.kinds import kind_of
from src.app.run import train
from src.core.errors import ConfigError
from src.core.files import atomic_write
from src.core.utils import build, command_line, git_revision, one_line_errors
from src.evaluation.verdict import verdict
from src.evaluation.walk import EvalResult, ledger_metrics
from src.reports.run import metrics_table, significance_table


def fold_bounds(n: int, folds: int, oos_fraction: float, val_bars: int | None) -> list[dict[str, int]]:
    """Bar counts (after the warm-up) of each fold: train, val, test, consecutive and non-overlapping."""
    if folds < 1 or not 0 < oos_fraction < 1:
        raise ConfigError(f"walk_forward: folds must be >= 1 and 0 < oos_fraction < 1, got {folds}, {oos_fraction}")
    test = int(n * oos_fraction) // folds
    val = val_bars or test
    first = n - folds * test
    if test < 2 or first - val < 2:
        raise ConfigError(f"walk_forward: {n} bars are too few for {folds} folds of {test} test and {val} val bars")
    return [{"train_bars": first + k * test - val, "val_bars": val, "test_bars": test} for k in range(folds)]


def _hydra_node(node: DictConfig, output_dir: Path) -> DictConfig:
    """A copy of Hydra's own (typed) config node with another runtime output directory."""
    node = copy.deepcopy(node)
    OmegaConf.set_readonly(node, False)
    with open_dict(node):
        node.runtime.output_dir = str(output_dir)
    return node


@one_line_errors
def walk_forward(cfg: DictConfig) -> dict:
    """Run every fold, stitch the test periods, write the report; returns the stitched metrics."""
    hydra_node = HydraConfig.get()
    out = Path(hydra_node.runtime.output_dir)
    wf = cfg.walk_forward
    full = build(cfg.env)  # the whole series once: its length decides the folds
    n = kind_of(cfg.env).lengths(full)  # a market's bars after the warm-up; the dates all tickers cover
    bounds = fold_bounds(n, int(wf.folds), float(wf.oos_fraction), wf.get("val_bars"))
    rows, agent, bh = [], [], []
    for k, b in enumerate(bounds):
        fold_dir = out / f"fold_{k}"
        # a run of src.train in fold_dir: ${hydra:runtime.output_dir} in the config now resolves there
        fold_cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("walk_forward", "hydra")])
        with open_dict(fold_cfg):
            fold_cfg.env.split = dict(b)
            fold_cfg.hydra = _hydra_node(hydra_node, fold_dir)
        fold_dir.mkdir(parents=True, exist_ok=True)
        HydraConfig.instance().set_config(fold_cfg)
        print(f"\n== fold {k + 1}/{len(bounds)}: {b}", flush=True)
        train(fold_cfg)
        led = pd.read_csv(fold_dir / "trades_test.csv", index_col="timestamp", parse_dates=True)
        m = json.loads((fold_dir / "metrics.json").read_text())
        info = json.loads((fold_dir / "run_info.json").read_text())["data"]
        rows.append(
            {
                "fold": k,
                "train": f"{info['train']['first'][:10]} .. {info['train']['last'][:10]}",
                "val": f"{info['val']['first'][:10]} .. {info['val']['last'][:10]}",
                "test": f"{info['test']['first'][:10]} .. {info['test']['last'][:10]}",
                "val_sharpe": m["val"]["agent"]["sharpe"],
                "test_sharpe": m["test"]["agent"]["sharpe"],
                "bh_test_sharpe": m["test"]["buy_and_hold"]["sharpe"],
                "test_return": m["test"]["agent"]["total_return"],
                "bh_test_return": m["test"]["buy_and_hold"]["total_return"],
            }
        )
        agent.append(led[["position", "turnover", "net_return", "risk_free"]])
        entry = [1.0] + [0.0] * (len(led) - 1)  # buy-and-hold enters at each fold's start, as the fold does
        bh.append(
            pd.DataFrame(
                {
                    "position": 1.0,
                    "turnover": entry,
                    "net_return": led["buy_and_hold_net_return"],
                    "risk_free": led["risk_free"],
                }
            )
        )
    with open_dict(cfg):
        cfg.hydra = hydra_node
    HydraConfig.instance().set_config(cfg)
    return _report(cfg, out, full, rows, pd.concat(agent), pd.concat(bh))


def _report(cfg, out: Path, market, rows: list[dict], agent: pd.DataFrame, bh: pd.DataFrame) -> dict:
    bpy = market.bars_per_year
    if not agent.index.is_monotonic_increasing or agent.index.has_duplicates:
        raise ConfigError("walk_forward: fold test periods overlap or are out of order")  # cannot happen: a guard
    ledgers = {"agent": agent, "buy_and_hold": bh}
    res = {"oos": {name: EvalResult("test", led, ledger_metrics(led, bpy)) for name, led in ledgers.items()}}
    for n in res["oos"]:
        res["oos"][n].ledger["equity"] = (1 + res["oos"][n].ledger["net_return"]).cumprod()
    judged = verdict({"test": res["oos"]}, bpy, bars_per_day=market.bars_per_day)
    judged["sentence"] = judged["sentence"].replace("On the test period", "Over the stitched out-of-sample folds")
    folds = pd.DataFrame(rows)
    fmt = {c: (lambda v: f"{v:.3f}") for c in folds if "sharpe" in c} | {
        c: (lambda v: f"{100 * v:.2f}%") for c in folds if "return" in c
    }
    lines = ["| " + " | ".join(folds.columns) + " |", "|" + "---|" * len(folds.columns)]
    for r in folds.itertuples(index=False):
        lines.append("| " + " | ".join(fmt.get(c, str)(v) for c, v in zip(folds.columns, r, strict=True)) + " |")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for n, style in (("agent", "-"), ("buy_and_hold", "--")):
        eq = res["oos"][n].ledger["equity"]
        ax.plot(eq.index, eq.to_numpy(), style, label=n.replace("_", " "))
    for r in rows[1:]:
        ax.axvline(pd.Timestamp(r["test"].split(" .. ")[0]), color="grey", alpha=0.3)
    ax.set_title(f"{cfg.env.name}: walk-forward out-of-sample equity ({len(rows)} folds)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "walk_forward.png", dpi=110)
    plt.close(fig)
    md = f"""# Walk-forward: {cfg.env.name}, {len(rows)} folds

```
{command_line()}
```

Revision {git_revision()}. Each fold trains on all bars before its validation period, selects its checkpoint
on validation and evaluates its test period once; the test periods are consecutive and stitched below.

{chr(10).join(lines)}

## Stitched out-of-sample ({len(agent)} bars)

{metrics_table(res)}

{judged["sentence"]}

{significance_table(judged)}

![out-of-sample equity](walk_forward.png)
"""
    atomic_write(out / "walk_forward.md", md)
    payload = {"folds": rows, "oos": {n: r.metrics for n, r in res["oos"].items()}, "verdict": judged}
    atomic_write(out / "walk_forward.json", json.dumps(payload, indent=2, default=_num) + "\n")
    print(f"\n{md}\nwalk-forward directory: {out}\n", flush=True)
    return payload


def _num(x):
    return None if isinstance(x, float) and not math.isfinite(x) else float(x)


@hydra.main(version_base="1.3", config_path="../conf", config_name="walk_forward")
def main(cfg: DictConfig) -> None:
    walk_forward(cfg)


if __name__ == "__main__":
    main()
