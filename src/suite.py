"""``python -m src.suite [options] [overrides ...]``: one configuration across the planted-signal markets.

For every market (``--markets``; default: the six of :mod:`src.data.planted`, optionally the shipped tickers) it
trains ``population=K`` members (``--population``) with the given overrides, each member selected on validation
and tested once (:mod:`src.training.population`), and writes one table: the test Sharpe's mean and 95% interval over
members, the **share of the oracle's Sharpe captured** (the oracle measured after costs on the same test bars,
:func:`src.evaluation.oracle.oracle_results`), buy-and-hold, and how many members beat buy-and-hold after Holm's
correction. With ``--baseline "<overrides>"`` the baseline configuration is trained on the same markets with the
same member seeds, and every row gets the paired difference (member k against baseline member k) with its
interval and p-value (:func:`src.evaluation.stats.paired_difference`) and what the design could detect.

Every run is its own ``python -m src.train`` process (the same command a user would type, recorded in each run's
report) under ``--out``. Scale up by override: ``--population 64 trainer.max_steps=20000 trainer=gpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from src.app.config_check import CONF
from src.app.kinds import refuse_population
from src.core.errors import ConfigError
from src.core.files import atomic_write
from src.evaluation.oracle import oracle_results
from src.evaluation.stats import holm, mean_interval, paired_difference
from src.reports.population import population_verdict
from src.reports.suite import report

MARKETS = ("momentum", "mean_reversion", "ou_trend", "regime", "vol_clustering", "null_market")
TICKERS = ("tsla",)
# The member size and budget that fit the suite in minutes a market on 2 cores (override any of them); the
# transformer's size only when no other model is chosen
SIZE = ["model.d_model=32", "model.n_layers=1", "model.d_ff=64", "model.head_hidden=32"]
DEFAULTS = ["algo.num_envs=16", "algo.rollout_steps=64", "trainer.max_steps=960", "trainer.val_check_interval=5",
            "trainer.enable_progress_bar=false"]  # fmt: skip


def arm(overrides: list[str]) -> list[str]:
    """The suite's defaults, then ``overrides`` (which win)."""
    other_model = any(o.startswith("model=") and o != "model=transformer" for o in overrides)
    return [*([] if other_model else SIZE), *DEFAULTS, *overrides]


def _command(market: str, overrides: list[str], population: int) -> list[str]:
    return [sys.executable, "-m", "src.train", f"env={market}", f"population={population}", *arm(overrides)]


def _start(market: str, overrides: list[str], population: int, run_dir: Path) -> subprocess.Popen:
    cmd = _command(market, overrides, population)
    print(f"$ {shlex.join(['python', *cmd[1:]])}", flush=True)
    proc = subprocess.Popen([*cmd, f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    proc.suite = (market, cmd, run_dir)  # type: ignore[attr-defined]
    TRAINED.append(run_dir)
    return proc


def _finish(proc: subprocess.Popen) -> None:
    market, cmd, run_dir = proc.suite  # type: ignore[attr-defined]
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"suite: the run on {market} failed:\n{out[-2000:]}\n{err[-2000:]}")
    atomic_write(run_dir / "suite_command.json", json.dumps(cmd[1:]) + "\n")


def run_market(market: str, overrides: list[str], population: int, run_dir: Path) -> dict:
    """Train one population on one market; its metrics.json. A finished run in ``run_dir`` is reused only if it
    was made with the same overrides (an interrupted suite continues where it stopped)."""
    if not _finished(market, overrides, population, run_dir):
        _finish(_start(market, overrides, population, run_dir))
    return {**json.loads((run_dir / "metrics.json").read_text()), "runs": [provenance(run_dir)]}


def provenance(run_dir: Path) -> dict:
    """What a run was made from (its run_info.json): code revision, data hash and costs, test bars, bar size."""
    info = json.loads((run_dir / "run_info.json").read_text())
    data = info["data"]
    return {"revision": info.get("git_revision") or "unknown", "data": data["sha256"], "costs": data["costs"],
            "test_bars": int(data["test"]["bars"]), "bars_per_year": float(data["bars_per_year"])}  # fmt: skip


def _finished(market: str, overrides: list[str], population: int, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run of these settings; one of other settings is refused."""
    if not (run_dir / "metrics.json").exists():
        return False
    record = run_dir / "suite_command.json"
    if not record.exists() or json.loads(record.read_text()) != _command(market, overrides, population)[1:]:
        raise SystemExit(f"suite: {run_dir} holds a run made with other settings; choose another --out")
    return True


def train_market(market: str, overrides: list[str], population: int, run_dir: Path, parallel: int) -> dict:
    """One population's metrics on one market: batched in one process where it can be, else K separate runs (one
    member is one separate run)."""
    if population > 1 and batched(market, overrides, population):
        return run_market(market, overrides, population, run_dir)
    return run_seeds(market, overrides, population, run_dir, parallel)


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


def batched(market: str, overrides: list[str], population: int) -> bool:
    """Whether one ``population=K`` process can train this configuration; if not (an add-on, an ensemble,
    another algorithm: :data:`src.app.kinds.POPULATION`), the suite runs the K seeds one by one."""
    try:
        refuse_population(_compose([f"env={market}", f"population={population}", *arm(overrides)]))
    except ConfigError:
        return False
    return True


def m_seed(overrides: list[str]) -> int:
    """The seed the overrides set (the last ``seed=`` wins, as in Hydra); 0 by default."""
    return next((int(o.split("=", 1)[1]) for o in reversed(overrides) if o.startswith("seed=")), 0)


def run_seeds(market: str, overrides: list[str], population: int, run_dir: Path, parallel: int) -> dict:
    """The K seeds as K separate runs (``parallel`` one-thread processes at a time), gathered into a population's
    metrics: the same members (seed, validation selection, single test, verdict) and the same summary."""
    seed = m_seed(overrides)
    jobs = [(run_dir / f"seed_{seed + j}", [*overrides, f"seed={seed + j}", "threads=1"]) for j in range(population)]
    pending = [(d, ov) for d, ov in jobs if not _finished(market, ov, 1, d)]
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < parallel:
            running.append(_start(market, pending[0][1], 1, pending.pop(0)[0]))
        _finish(running.pop(0))
    members = []
    for d, ov in jobs:
        m = json.loads((d / "metrics.json").read_text())
        members.append({"seed": m_seed(ov), "test": m["test"], "val": m["val"], "verdict": m["verdict"]})
    return {"members": members, "population": population_verdict([m["verdict"] for m in members]), "separate": True,
            "runs": [provenance(d) for d, _ in jobs]}  # fmt: skip


def market_oracle(market: str, overrides: list[str]) -> float:
    """The oracle's test Sharpe after costs (NaN for a market without one, e.g. a shipped ticker)."""
    from src.core.utils import build

    cfg = _compose([f"env={market}", *[o for o in overrides if o.startswith(("env.", "+env."))]])
    m = build(cfg.env)
    return float(oracle_results(m, "test")["sharpe"]) if m.oracle is not None else float("nan")


def member_sharpes(metrics: dict) -> list[float]:
    return [float(m["test"]["agent"]["sharpe"]) for m in metrics["members"]]


TRAINED: list[Path] = []  # the runs this invocation trained (the others were reused)
EDGE = 0.25  # an oracle share needs an oracle Sharpe this much above 0
GAP = 0.5  # an excess share needs an oracle this much above buy-and-hold (a smaller gap makes the ratio noise)


def edge_holm(metrics: dict, alpha: float = 0.05) -> int:
    """Members whose test Sharpe is above 0 (one-sided, from the probabilistic Sharpe ratio against 0), after
    Holm's correction over the members: what the null market's row must show as 0 (a member that only loses its
    costs there is no leak, so the test is one-sided)."""
    p = []
    for m in metrics["members"]:
        psr = float(m["verdict"]["test"]["psr_vs_zero"])  # P(true Sharpe > 0); a member that never traded has
        flat = float(m["test"]["agent"]["annual_volatility"]) == 0  # Sharpe 0 exactly, not an edge
        p.append(1.0 if flat else 1 - psr)
    return sum(x <= alpha for x in holm(p))


def edge_threshold(test_bars: int, bars_per_year: float, k: int, alpha: float = 0.05) -> float:
    """About the smallest annualised test Sharpe that :func:`edge_holm` flags in a member (Holm's first step,
    one-sided alpha / k; normal returns): what the null row can and cannot see."""
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / k) * (bars_per_year / (test_bars - 1)) ** 0.5)


def row(market: str, metrics: dict, oracle: float, baseline: dict | None) -> dict:
    s = member_sharpes(metrics)
    pop = metrics["population"]
    bh = pop["buy_and_hold_sharpe"]
    out = {"market": market, "oracle_sharpe": oracle, "buy_and_hold_sharpe": bh, "test_sharpe": mean_interval(s),
           "members": len(s), "beat_bh_holm": pop["beat_buy_and_hold_holm"], "edge_holm": edge_holm(metrics),
           "member_sharpes": s, "separate": bool(metrics.get("separate")), "runs": metrics.get("runs", [])}  # fmt: skip
    t = out["test_sharpe"]
    out["oracle_share"] = {k: t[k] / oracle for k in ("mean", "low", "high")} if oracle > EDGE else None
    gap = oracle - bh  # what knowing the edge adds to holding the asset
    edge = oracle > EDGE and gap > GAP  # none where the oracle earns nothing (the null market stays flat)
    out["excess_share"] = {k: (t[k] - bh) / gap for k in ("mean", "low", "high")} if edge else None
    if baseline is not None:
        data = {(r["data"], json.dumps(r["costs"], sort_keys=True)) for r in [*out["runs"], *baseline.get("runs", [])]}
        if len(data) > 1:
            raise SystemExit(f"suite: on {market} the candidate and the baseline ran on different data or "
                             "costs; they cannot be paired (give env.* overrides to both, as shared ones)")  # fmt: skip
        b = member_sharpes(baseline)
        out["baseline_runs"] = baseline.get("runs", [])
        out["baseline_sharpe"] = mean_interval(b)
        out["baseline_separate"] = bool(baseline.get("separate"))
        out["difference"] = paired_difference(s, b)
    return out


def check_args(markets: list[str], args) -> None:
    """Every market an env option, at least one of them, at least one member: refused before anything trains."""
    conf = CONF / "env"
    options = sorted(p.stem for p in conf.glob("*.yaml") if p.stem != "base")
    if not markets:
        raise SystemExit("suite: --markets names no market; give env options separated by commas")
    for m in markets:
        if not (conf / f"{m}.yaml").is_file():
            raise SystemExit(f"suite: --markets: {m!r} is not an env option (conf/env/{m}.yaml); one of {options}")
    if args.population < 1:
        raise SystemExit(f"suite: --population must be >= 1, got {args.population}")
    if args.parallel is not None and args.parallel < 1:
        raise SystemExit(f"suite: --parallel must be >= 1, got {args.parallel}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markets", default=",".join(MARKETS), help=f"comma-separated env options (default {MARKETS})")
    ap.add_argument("--tickers", action="store_true", help=f"also the shipped tickers {TICKERS}")
    ap.add_argument("--population", type=int, default=8, help="members per market (seeds 0..K-1)")
    ap.add_argument(
        "--parallel",
        type=int,
        default=os.cpu_count() or 1,
        help="one-thread processes at a time where the seeds must run separately (default: the cores)",
    )
    ap.add_argument("--candidate", default="", help="overrides of the configuration under test only, in quotes")
    ap.add_argument("--baseline", help="overrides of a baseline configuration only, in quotes (compared by seed)")
    ap.add_argument("--out", type=Path, default=Path("outputs/suite") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    ap.add_argument("--report", type=Path, help="also write the markdown table here")
    ap.add_argument("overrides", nargs="*", help="overrides of both configurations (budget, env keys, seed, trainer)")
    args = ap.parse_args(argv)
    markets = [m for m in args.markets.split(",") if m] + (list(TICKERS) if args.tickers else [])
    check_args(markets, args)  # before anything trains or is written
    for name, given in (("--candidate", args.candidate), ("--baseline", args.baseline or "")):
        own_env = [o for o in shlex.split(given) if o.lstrip("+~").startswith("env.")]
        if own_env:
            raise SystemExit(f"suite: {name} sets {own_env[0]}: the market must be the same for both arms (and its "
                             "oracle); give env.* overrides as shared overrides, after the options")  # fmt: skip
    cand = [*args.overrides, *shlex.split(args.candidate)]
    base = [*args.overrides, *shlex.split(args.baseline)] if args.baseline is not None else None
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
    started, rows = time.time(), []
    TRAINED.clear()
    for m in markets:
        metrics = train_market(m, cand, args.population, args.out / "candidate" / m, args.parallel)
        against = None if base is None else train_market(m, base, args.population, args.out / "baseline" / m,
                                                         args.parallel)  # fmt: skip
        rows.append(row(m, metrics, market_oracle(m, args.overrides), against))
    cmd = shlex.join(["python", "-m", "src.suite", *(argv if argv is not None else sys.argv[1:])])
    conf = {"population": args.population, "seed": m_seed(args.overrides), "arm": arm([]), "shared": args.overrides,
            "candidate": args.candidate, "baseline": base, "out": args.out, "edge": EDGE, "gap": GAP,
            "threshold": edge_threshold}  # fmt: skip
    text = report(rows, cmd, conf, time.time() - started, len(TRAINED))
    atomic_write(args.out / "suite.json", json.dumps(rows, indent=1, default=float) + "\n")
    atomic_write(args.out / "suite.md", text)
    if args.report:
        atomic_write(args.report, text)
    print(text)


if __name__ == "__main__":
    main()
