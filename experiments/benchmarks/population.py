"""``make bench``, population part: env-steps/s summed over members of ``population=K`` against K separate runs.

Each measurement is its own process (so its peak resident memory is its own): steady-state PPO iterations of
``python -m src.train``'s module on TSLA (one warm-up iteration, then ``--iterations`` timed), no validation.

- population=K in one process, on every core (``--threads`` of the parent, default 2);
- K separate runs on the same cores: ``min(K, cores)`` processes at a time, one thread each (what a user does
  with a multirun); their summed rate is measured with that many processes running at once. More processes
  than cores only take turns, so K > cores separate runs cannot be faster than that sum; their memory is K
  times one run's peak.

Writes ``population.json`` beside this file and re-renders ``results.md`` (``bench.py --from-json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

# the suite's member size (src/suite.py): small enough that many members fit a CPU
SMALL = ["model.d_model=32", "model.n_layers=1", "model.d_ff=64", "model.head_hidden=32",
         "algo.num_envs=16", "algo.rollout_steps=64"]  # fmt: skip
CONFIGS = {"small": (SMALL, (1, 4, 16, 64)), "default": ([], (1, 4, 16))}


def child(k: int, threads: int, overrides: list[str], iterations: int) -> dict:
    """One process: steady-state env-steps/s of population=K (summed over members), and its peak memory."""
    import lightning as L
    import torch
    from bench import compose, peak_rss_mb

    from src.core.utils import build
    from src.training.module import PPOModule
    from src.training.population import PopulationModule

    torch.set_num_threads(threads)
    cfg = compose(["env=tsla", f"population={k}", *overrides])
    module = (PopulationModule if k > 1 else PPOModule)(cfg, build(cfg["env"]))
    p = module.ppo
    marks: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                marks.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            marks.append(time.perf_counter())

    trainer = L.Trainer(accelerator="cpu", max_steps=(iterations + 1) * p.update_epochs * p.num_minibatches,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Clock()])  # fmt: skip
    trainer.fit(module)
    return {"sps": k * iterations * p.batch_size / (marks[1] - marks[0]), "rss_mb": peak_rss_mb()}


def spawn(k: int, threads: int, overrides: list[str], iterations: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", str(k), "--threads", str(threads), "--iterations", str(iterations)]
    return subprocess.Popen([*cmd, "--", *overrides], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def collect(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            raise SystemExit(f"population bench child failed:\n{stdout[-2000:]}\n{stderr[-2000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def measure(threads: int, iterations: int) -> dict:
    cores = os.cpu_count() or 1
    res: dict = {"cores": cores, "threads": threads, "iterations": iterations, "configs": {}}
    for name, (overrides, ks) in CONFIGS.items():
        t0 = time.perf_counter()
        one = collect([spawn(1, 1, overrides, iterations)])[0]
        together = collect([spawn(1, 1, overrides, iterations) for _ in range(min(cores, max(ks)))])
        rows = {}
        for k in ks:
            rows[str(k)] = collect([spawn(k, threads, overrides, iterations)])[0]
            print(f"{name} K={k}: {rows[str(k)]['sps']:.0f} env-steps/s", file=sys.stderr, flush=True)
        res["configs"][name] = {"overrides": overrides, "one_process": one, "concurrent": together,
                                "population": rows, "wall": time.perf_counter() - t0}  # fmt: skip
    return res


def section(res: dict) -> list[str]:
    """The population scaling table for ``results.md``."""
    cores, threads = res["cores"], res["threads"]
    lines = [
        "## (f) Population training: K seeds in one batched process vs K separate processes",
        "",
        f"`python experiments/benchmarks/population.py` (part of `make bench`): steady-state PPO on TSLA, "
        f"{res['iterations']} timed iteration(s) after one warm-up, no validation. population=K runs in one process "
        f"on {threads} thread(s); K separate runs use the same {cores} cores as {cores} one-thread processes at "
        "once (more only take turns), so their rate is the summed rate of that many concurrent processes, and "
        "their memory K times one run's peak. env-steps/s are summed over members.",
        "",
    ]
    for name, c in res["configs"].items():
        one, conc = c["one_process"], c["concurrent"]
        sep = sum(x["sps"] for x in conc)
        what = ", ".join(c["overrides"]) or "the default transformer (d_model 64, 2 layers, 32 envs x 128 steps)"
        lines += [f"**{name}** ({what}); one run alone, one thread: {one['sps']:,.0f} env-steps/s, "
                  f"peak {one['rss_mb']:,.0f} MiB.", ""]  # fmt: skip
        cols = ("K", "population=K, env-steps/s", "peak memory", "K separate processes, env-steps/s", "their memory",
                "population / separate", "time of K members / one run")  # fmt: skip
        lines += ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
        for k, r in c["population"].items():
            kk = int(k)
            s = one["sps"] if kk == 1 else sep
            lines.append(
                f"| {kk} | {r['sps']:,.0f} | {r['rss_mb']:,.0f} MiB | {s:,.0f} | {kk * one['rss_mb']:,.0f} MiB "
                f"| {r['sps'] / s:.2f}x | {kk * one['sps'] / r['sps']:.1f}x |"
            )
        lines += ["", f"Wall time of this configuration's measurements: {c['wall']:.0f} s.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.overrides, args.iterations)))
        return
    res = measure(args.threads, args.iterations)
    (HERE / "population.json").write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(section(res)))
    if (HERE / "results.json").exists():
        subprocess.run([sys.executable, str(HERE / "bench.py"), "--from-json", str(HERE / "results.json")],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)  # fmt: skip


if __name__ == "__main__":
    main()
