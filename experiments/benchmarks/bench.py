"""``make bench``: how fast tradelab is on this machine (issue 8). Prints and writes ``results.md``.

Parts so far:

(a) env-steps/s of :class:`src.envs.MarketEnv` returning observations, at N in {1, 64, 1024, 16384},
    with the bytes each step writes (the (N, window, F) observation, the position and the step's
    outputs) turned into GB/s and set against a copy bandwidth measured in the same run;
(d) peak resident memory of the process after each part.

Every figure is the median of ``--repeats`` timed repeats (min–max shown), after a warm-up.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from src.data import build_market
from src.data.synthetic import generate_bars
from src.envs.market_env import MarketEnv

OUT = Path(__file__).resolve().parent / "results.md"


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def fmt_range(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):,.1f}{unit} ({min(v):,.1f}–{max(v):,.1f})"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy_bandwidth(repeats: int, mib: int = 512) -> list[float]:
    """GB/s of ``dst.copy_(src)`` on ``mib`` MiB of fp32 (bytes read + written)."""
    src = torch.rand(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    secs = timed(lambda: dst.copy_(src), repeats)
    return [2 * src.numel() * 4 / s / 1e9 for s in secs]


def env_throughput(n: int, steps: int, repeats: int) -> tuple[list[float], int]:
    """env-steps/s at N envs (random actions drawn up front) and the bytes one step writes."""
    bars = generate_bars(n_bars=4000, seed=0)
    market = build_market(bars, name="bench", source="synthetic", data_hash="-", costs={"commission_bps": 1})
    env = MarketEnv(market, "train", n, generator=torch.Generator().manual_seed(0))
    env.reset()
    actions = torch.rand(steps, n) * 2 - 1

    def run():
        for a in actions:
            env.step(a)

    secs = timed(run, repeats)
    w, f = market.window, market.num_features
    per_step = n * (w * f * 4 + 4 + 4 * 10)  # observation window + position + ~10 outputs of 4 bytes
    return [n * steps / s for s in secs], per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = [
        "# Benchmarks",
        "",
        "Command: `make bench`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}.",
        "",
    ]
    bw = copy_bandwidth(args.repeats)
    lines += [f"Copy bandwidth (512 MiB fp32, read + write): {fmt_range(bw, unit=' GB/s')}.", ""]
    lines += ["## (a) The env with observations", "", "| N | env-steps/s | GB/s written | of copy bandwidth |"]
    lines += ["|---:|---:|---:|---:|"]
    for n in (1, 64, 1024, 16384):
        steps = max(20, min(2000, 2_000_000 // n))
        sps, per_step = env_throughput(n, steps, args.repeats)
        gbs = [x / n * per_step / 1e9 for x in sps]
        lines.append(
            f"| {n:,} | {fmt_range(sps, 1e-6, 'M')} | {statistics.median(gbs):.1f} | "
            f"{statistics.median(gbs) / statistics.median(bw):.0%} |"
        )
    lines += ["", f"Peak resident memory after (a): {peak_rss_mb():,.0f} MiB.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
