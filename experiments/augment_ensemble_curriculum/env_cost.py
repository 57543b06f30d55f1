"""The env-side cost of each augmentation, alone: env-steps/s of 32 TSLA training envs over 1,280 steps.

``python experiments/augment_ensemble_curriculum/env_cost.py`` (1 thread, best of 3): the plain env
against the augmented env (:class:`src.envs.augmented_env.AugmentedEnv`) with each ``augmentation=``
option, path generation included. The model is not involved.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))

from bench import compose  # noqa: E402

from src.core.utils import build  # noqa: E402
from src.envs.augmented_env import AugmentedEnv  # noqa: E402
from src.envs.market_env import MarketEnv  # noqa: E402

OPTIONS = ("none", "jitter", "magnitude_warp", "time_warp", "window_slice", "mixup", "cutmix", "all")


def main(n: int = 32, steps: int = 1280, repeats: int = 3) -> None:
    torch.set_num_threads(1)
    base = None
    print("| augmentation | env-steps/s | vs plain env |\n|---|---:|---:|")
    for option in OPTIONS:
        cfg = compose(["env=tsla", f"augmentation={option}"])
        market = build(cfg["env"])
        gen = torch.Generator().manual_seed(0)
        if option == "none":
            env = MarketEnv(market, "train", n, random_start=True, generator=gen)
        else:
            env = AugmentedEnv(market, n, build(cfg["augmentation"]), gen, min_path=128)
        env.reset()
        actions = torch.rand(steps, n, generator=torch.Generator().manual_seed(1)) * 2 - 1
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for a in actions:
                env.step(a)
            best = min(best, time.perf_counter() - t0)
        sps = n * steps / best
        base = base or sps
        print(f"| `{option}` | {sps:,.0f} | {'' if option == 'none' else f'{sps / base - 1:+.0%}'} |", flush=True)


if __name__ == "__main__":
    main()
