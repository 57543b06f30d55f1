"""Soak test: train for a fixed wall-clock time and check that memory stays flat and speed does not drop.

Usage::

    python experiments/reliability/soak.py --minutes 30 [--out experiments/reliability] [-- key=value ...]

Runs ``python -m src.train`` (default config: TSLA daily, transformer, PPO) with ``trainer.max_time`` set
and a step budget it cannot reach, the ``ResourceMonitor`` callback appending one row per PPO iteration
(seconds, gradient steps, env steps, RSS) to a CSV. Afterwards it summarises RSS and env-steps/s per
tenth of the run (wall-clock env-steps/s, validation included), fits a line to RSS over the second half
(after warm-up), and writes ``soak.md`` and ``soak.png`` to ``--out``. Exit status 1 when RSS grew more
than 5% over the second half or the last tenth's speed is more than 10% below the second tenth's.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def summarise(df: pd.DataFrame, parts: int = 10) -> pd.DataFrame:
    """RSS and wall-clock env-steps/s in ``parts`` equal slices of the run."""
    edges = np.linspace(0, df["seconds"].iloc[-1], parts + 1)
    rows = []
    for i in range(parts):
        s = df[(df["seconds"] > edges[i]) & (df["seconds"] <= edges[i + 1])]
        if len(s) < 2:
            continue
        rows.append(
            {
                "minutes": f"{edges[i] / 60:.1f}-{edges[i + 1] / 60:.1f}",
                "env_steps": int(s["env_steps"].iloc[-1]),
                "env_steps_per_s": (s["env_steps"].iloc[-1] - s["env_steps"].iloc[0])
                / (s["seconds"].iloc[-1] - s["seconds"].iloc[0]),
                "rss_mb_mean": s["rss_mb"].mean(),
                "rss_mb_max": s["rss_mb"].max(),
            }
        )
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "reliability")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for src.train")
    args = ap.parse_args()

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    run = ROOT / "outputs" / "soak" / stamp
    csv = run / "resources.csv"
    mins = int(args.minutes)
    secs = round((args.minutes - mins) * 60)
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        f"trainer.max_time=00:00:{mins:02d}:{secs:02d}",
        "trainer.max_steps=100000000",
        "trainer.enable_progress_bar=false",
        f"callbacks.resources.csv={csv}",
        f"hydra.run.dir={run}",
        *args.overrides,
    ]
    print(" ".join(cmd[1:]), flush=True)
    started = time.time()
    res = subprocess.run(cmd, cwd=ROOT)
    if res.returncode != 0:
        print(f"training failed with exit status {res.returncode}", file=sys.stderr)
        return res.returncode

    df = pd.read_csv(csv)
    parts = summarise(df)
    half = df[df["seconds"] >= df["seconds"].iloc[-1] / 2]
    # RSS moves by tens of MiB between iterations (allocator, validation), so judge the trend of a
    # least-squares line over the second half rather than its two end points.
    slope, icept = np.polyfit(half["seconds"] / 60, half["rss_mb"], 1)  # MiB per minute
    t0, t1 = half["seconds"].iloc[0] / 60, half["seconds"].iloc[-1] / 60
    growth = slope * (t1 - t0) / (slope * t0 + icept)
    speed_drop = 1 - parts["env_steps_per_s"].iloc[-1] / parts["env_steps_per_s"].iloc[1]
    ok = growth <= 0.05 and speed_drop <= 0.10

    fig, ax = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax[0].plot(df["seconds"] / 60, df["rss_mb"])
    ax[0].set_ylabel("RSS (MiB)")
    sps = df["env_steps"].diff() / df["seconds"].diff()
    ax[1].plot(df["seconds"] / 60, sps.rolling(10, min_periods=1).mean())
    ax[1].set_ylabel("env-steps/s (10-iteration mean)")
    ax[1].set_xlabel("minutes")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "soak.png", dpi=100)

    table = "\n".join(
        ["| minutes | env steps | env-steps/s | RSS mean (MiB) | RSS max (MiB) |", "|---|---:|---:|---:|---:|"]
        + [
            f"| {r.minutes} | {r.env_steps:,} | {r.env_steps_per_s:.0f} | {r.rss_mb_mean:.1f} | {r.rss_mb_max:.1f} |"
            for r in parts.itertuples()
        ]
    )
    md = f"""# Soak run ({args.minutes:g} minutes, measured {time.strftime("%Y-%m-%d")})

Command (from the repository root):

```bash
python experiments/reliability/soak.py --minutes {args.minutes:g} {" ".join(args.overrides)}
```

Machine: {platform.platform()}, {platform.processor() or platform.machine()}; wall time {time.time() - started:.0f} s.
The run: {len(df)} PPO iterations, {int(df["env_steps"].iloc[-1]):,} env steps, {int(df["gradient_steps"].iloc[-1]):,}
gradient steps (default config, validation every 5 iterations included in the wall-clock speed).

{table}

- RSS over the second half (least-squares line): {slope * t0 + icept:.1f} -> {slope * t1 + icept:.1f} MiB
  ({100 * growth:+.2f}%), slope {slope:+.3f} MiB/minute; peak {df["rss_mb"].max():.1f} MiB.
- env-steps/s: second tenth {parts["env_steps_per_s"].iloc[1]:.0f}, last tenth {parts["env_steps_per_s"].iloc[-1]:.0f}
  ({-100 * speed_drop:+.1f}%).
- Verdict: {"flat memory and no slow-down" if ok else "FAILED: memory grew or speed dropped"}
  (limits: RSS growth <= 5% over the second half, speed drop <= 10%).

![RSS and env-steps/s over time](soak.png)
"""
    (args.out / "soak.md").write_text(md)
    print(md)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
