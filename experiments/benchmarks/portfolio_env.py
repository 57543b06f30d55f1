"""The portfolio env's throughput against the number of assets K: ``python experiments/benchmarks/portfolio_env.py``.

Loads the shipped nine-asset portfolio (``env=portfolio``), builds K-asset markets from it (the assets cycled,
so K = 18 and 36 repeat them: the arithmetic is what is measured), and times N envs stepping with random
Dirichlet actions, observation gather included, beside the single-asset MarketEnv at the same N. Writes
``experiments/benchmarks/portfolio_env.md``. Run with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import subprocess
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from src.core.utils import build
from src.envs.market_env import MarketEnv
from src.envs.portfolio_env import PortfolioEnv
from src.models.portfolio import SimplexDirichlet

ROOT = Path(__file__).resolve().parents[2]


def portfolio(k: int, base):
    idx = torch.arange(k) % base.num_assets
    cols = {f: getattr(base, f)[:, idx] for f in ("features", "pre", "post", "dividend")}
    names = [f"{base.tickers[i]}{j}" for j, i in enumerate(idx.tolist())]
    close, per = base.close[:, idx.numpy()], {"rate": base.rate[idx], "borrow": base.borrow[idx]}
    return dataclasses.replace(base, tickers=names, close=close, **per, **cols)


def rate(env, actions, steps: int) -> float:
    env.reset()
    for a in actions[:5]:
        env.step(a)
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % len(actions)])
    return env.n * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments/benchmarks/portfolio_env.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        base = build(compose("train", overrides=["env=portfolio"]).env)
        single = build(compose("train", overrides=["env=tsla"]).env)
    gen = torch.Generator().manual_seed(0)
    n = args.envs
    rows = []
    one = MarketEnv(single, "train", n, generator=torch.Generator().manual_seed(0))
    acts = [torch.rand(n, generator=gen) * 2 - 1 for _ in range(16)]
    ref = [rate(one, acts, args.steps) for _ in range(args.repeats)]
    rows.append(("single-asset MarketEnv (TSLA)", 1, ref))
    for k in (1, 2, 4, 9, 18, 36):
        pm = portfolio(k, base)
        env = PortfolioEnv(pm, "train", n, generator=torch.Generator().manual_seed(0))
        acts = [SimplexDirichlet(torch.full((n, k + 1), 2.0)).sample() for _ in range(16)]
        rows.append((f"PortfolioEnv, K = {k}", k, [rate(env, acts, args.steps) for _ in range(args.repeats)]))
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    lines = [
        "# Portfolio env: env-steps/s against the number of assets K",
        "",
        "```",
        f"python experiments/benchmarks/portfolio_env.py --envs {n} --steps {args.steps} --repeats {args.repeats} "
        f"--threads {args.threads}",
        "```",
        "",
        f"Revision {rev.strip()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), N = {n} envs, random Dirichlet actions, observation gather ((N, K, window, F)) "
        "included. An env-step is one env advancing one bar (all K assets). Median of the repeats [min, max].",
        "",
        "| env | K | env-steps/s | per asset-step (ns) |",
        "|---|---:|---:|---:|",
    ]
    for name, k, r in rows:
        r = sorted(r)
        med = r[len(r) // 2]
        lines.append(f"| {name} | {k} | {med:,.0f} [{r[0]:,.0f}, {r[-1]:,.0f}] | {1e9 / (med * k):,.0f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
