"""Aggregate comparison multiruns into ``results.md`` and ``learning_curves.png``.

Usage: ``python experiments/compare.py <sweep dir> --out DIR --label optimizer|variant``.
Reads each run's ``config.yaml``, ``metrics.json``, ``run_info.json`` and ``val_history.csv``
and groups by (env, label): the optimizer, or the variant (algorithm + curiosity + replay).
Figures are mean ± sample std over seeds; env-steps/s is env steps / wall seconds of the whole
run (training, validation and test included).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import yaml


def optimizer_label(cfg: dict) -> str:
    return cfg["optimizer"]["_target_"].rsplit(".", 1)[-1]


def variant_label(cfg: dict) -> str:
    """``ppo``, ``ppo+rnd``, ``ppo+prioritized``, ``grpo``, ``ppo+aug:mixup``, ``ppo+ensemble3``,
    ``ppo+curriculum:linear``: one label per variant, naming what the config switches on."""
    algo = "grpo" if "GRPO" in cfg["algo"]["_target_"] else "ppo"
    parts = [algo]
    if cfg.get("curiosity"):
        parts.append(cfg["curiosity"]["_target_"].rsplit(".", 1)[-1].lower())  # rnd (icm in older runs)
    if cfg.get("replay"):
        parts.append(cfg["replay"]["kind"])
    transforms = [k for k, t in ((cfg.get("augmentation") or {}).get("transforms") or {}).items() if t and t["p"] > 0]
    if transforms:
        parts.append("aug:" + ("all" if len(transforms) == 6 else ",".join(transforms)))
    size = int((cfg.get("ensemble") or {}).get("size", 1))
    if size > 1:
        parts.append(f"ensemble{size}")
    if cfg.get("curriculum"):
        parts.append(f"curriculum:{cfg['curriculum']['kind']}")
    return "+".join(parts)


LABELS = {"optimizer": optimizer_label, "variant": variant_label}


def load_runs(sweep: Path, label=optimizer_label) -> pd.DataFrame:
    rows = []
    for run in sorted(p.parent for p in sweep.rglob("metrics.json")):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        m = json.loads((run / "metrics.json").read_text())
        info = json.loads((run / "run_info.json").read_text())
        rows.append(
            {
                "run": run,
                "env": cfg["env"]["name"],
                "label": label(cfg),
                "seed": cfg["seed"],
                "val_sharpe": m["val"]["agent"]["sharpe"],
                "val_return": m["val"]["agent"]["total_return"],
                "test_sharpe": m["test"]["agent"]["sharpe"],
                "test_return": m["test"]["agent"]["total_return"],
                "test_mdd": m["test"]["agent"]["max_drawdown"],
                "bh_test_sharpe": m["test"]["buy_and_hold"]["sharpe"],
                "wall_s": info["wall_seconds"],
                "env_steps": info["env_steps"],
                "sps": info["env_steps"] / info["wall_seconds"],
            }
        )
    if not rows:
        raise SystemExit(f"error: no finished runs (metrics.json) under {sweep}")
    return pd.DataFrame(rows)


def _ms(x: pd.Series, fmt: str) -> str:
    sd = statistics.stdev(x) if len(x) > 1 else 0.0
    return f"{fmt.format(x.mean())} ± {fmt.replace('+', '').format(sd)}"


def table(df: pd.DataFrame, name: str) -> str:
    head = (
        f"| env | {name} | seeds | val Sharpe | val return | test Sharpe | test return | test max DD | wall s | "
        "env-steps/s |"
    )
    lines = [
        head,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (env, opt), g in df.groupby(["env", "label"], sort=True):
        lines.append(
            f"| {env} | {opt} | {len(g)} | {_ms(g.val_sharpe, '{:.3f}')} | {_ms(g.val_return, '{:+.2%}')} | "
            f"{_ms(g.test_sharpe, '{:.3f}')} | {_ms(g.test_return, '{:+.2%}')} | {_ms(g.test_mdd, '{:.2%}')} | "
            f"{_ms(g.wall_s, '{:.0f}')} | {_ms(g.sps, '{:.0f}')} |"
        )
    bh = df.groupby("env").bh_test_sharpe.first()
    lines += ["", "Buy-and-hold test Sharpe: " + ", ".join(f"{e} {v:.3f}" for e, v in bh.items())]
    return "\n".join(lines)


def versus(df: pd.DataFrame, baseline: str) -> str:
    """Each label minus the baseline, per env: differences of seed means, with the two-sample t-test's p-value
    (Student's, equal seeds per arm) and, per env, the minimum detectable difference of the design.

    With 3 seeds a test has little power: p >= 0.05 means "no measurable difference", not "no effect".
    """
    import numpy as np
    from scipy.stats import ttest_ind

    from src.evaluation.stats import min_detectable_difference

    lines = [
        f"Difference from `{baseline}` (mean over seeds; two-sample t-test p-value in brackets):",
        "",
        "| env | variant | Δ val Sharpe | Δ test Sharpe | Δ env-steps/s |",
        "|---|---|---:|---:|---:|",
    ]
    detect = []
    for env, e in df.groupby("env", sort=True):
        base = e[e.label == baseline]
        if base.empty:
            continue
        for lab, g in e[e.label != baseline].groupby("label", sort=True):
            cells = []
            for col in ("val_sharpe", "test_sharpe"):
                p = ttest_ind(g[col], base[col]).pvalue if min(len(g), len(base)) > 1 else float("nan")
                cells.append(f"{g[col].mean() - base[col].mean():+.3f} (p={p:.2f})")
            cells.append(f"{g.sps.mean() / base.sps.mean() - 1:+.0%}")
            lines.append(f"| {env} | {lab} | " + " | ".join(cells) + " |")
        sd = float(np.sqrt(e.groupby("label").test_sharpe.var(ddof=1).mean()))  # pooled within-variant spread
        n = int(e.groupby("label").size().min())
        if n > 1:
            mdd = min_detectable_difference(sd, n)
            detect.append(f"{env}: {mdd:.2f} (pooled seed sd of test Sharpe {sd:.3f}, {n} seeds per variant)")
    if detect:
        lines += [
            "",
            "Minimum detectable difference in test Sharpe (two-sided 5% test, 80% power), measured from these runs' "
            "own spread: " + "; ".join(detect) + ". A smaller true effect would most likely read as 'no difference'.",
        ]
    return "\n".join(lines)


def curves(df: pd.DataFrame, out: Path) -> None:
    envs = sorted(df.env.unique())
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for opt, g in df[df.env == env].groupby("label"):
            hist = [
                pd.read_csv(r / "val_history.csv").set_index("env_steps").sharpe
                for r in g.run
                if (r / "val_history.csv").exists()
            ]
            if not hist:
                continue
            h = pd.concat(hist, axis=1)
            mean, sd = h.mean(axis=1), h.std(axis=1).fillna(0)
            ax.plot(h.index, mean, label=f"{opt} ({h.shape[1]} seeds)")
            ax.fill_between(h.index, mean - sd, mean + sd, alpha=0.2)
        ax.set(title=f"{env}: validation Sharpe", xlabel="env steps", ylabel="Sharpe (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", choices=sorted(LABELS), default="optimizer")
    ap.add_argument("--title", default="Optimizer comparison")
    ap.add_argument("--command", required=True, help="the command that produced the runs (written to the table)")
    ap.add_argument("--baseline", help="a label to compare every other one against (e.g. ppo)")
    args = ap.parse_args()
    df = load_runs(args.sweep, LABELS[args.label])
    args.out.mkdir(parents=True, exist_ok=True)
    curves(df, args.out / "learning_curves.png")
    diff = f"{versus(df, args.baseline)}\n\n" if args.baseline else ""
    text = (
        f"# {args.title}\n\nCommand:\n\n```bash\n{args.command}\n```\n\n{table(df, args.label)}\n\n{diff}"
        f"![validation Sharpe vs env steps](learning_curves.png)\n"
    )
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
