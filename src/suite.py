"""``python -m src.suite [options] [overrides ...]``: one configuration across the planted-signal markets.

For every market (``--markets``; default: the six of :mod:`src.data.planted`, optionally the shipped tickers) it
trains ``population=K`` members (``--population``) with the given overrides, each member selected on validation
and tested once (:mod:`src.lit_population`), and writes one table: the test Sharpe's mean and 95% interval over
members, the **share of the oracle's Sharpe captured** (the oracle measured after costs on the same test bars,
:func:`src.data.planted.oracle_results`), buy-and-hold, and how many members beat buy-and-hold after Holm's
correction. With ``--baseline "<overrides>"`` the baseline configuration is trained on the same markets with the
same member seeds, and every row gets the paired difference (member k against baseline member k) with its
interval and p-value (:func:`src.stats.paired_difference`) and what the design could detect.

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

from src.data.planted import oracle_results
from src.errors import ConfigError
from src.lit_population import check_population
from src.population_report import population_verdict
from src.reporting import atomic_write
from src.stats import holm, mean_interval, min_detectable_difference, paired_difference

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
    return json.loads((run_dir / "metrics.json").read_text())


def _finished(market: str, overrides: list[str], population: int, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run of these settings; one of other settings is refused."""
    if not (run_dir / "metrics.json").exists():
        return False
    record = run_dir / "suite_command.json"
    if not record.exists() or json.loads(record.read_text()) != _command(market, overrides, population)[1:]:
        raise SystemExit(f"suite: {run_dir} holds a run made with other settings; choose another --out")
    return True


def train_market(market: str, overrides: list[str], population: int, run_dir: Path, parallel: int) -> dict:
    """One population's metrics on one market: batched in one process where it can be, else K separate runs."""
    if population == 1 or batched(market, overrides, population):
        return run_market(market, overrides, population, run_dir)
    return run_seeds(market, overrides, population, run_dir, parallel)


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def batched(market: str, overrides: list[str], population: int) -> bool:
    """Whether one ``population=K`` process can train this configuration; if not (an add-on, an ensemble,
    another algorithm: :func:`src.lit_population.check_population`), the suite runs the K seeds one by one."""
    try:
        check_population(_compose([f"env={market}", f"population={population}", *arm(overrides)]))
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
    return {"members": members, "population": population_verdict([m["verdict"] for m in members]), "separate": True}


def market_oracle(market: str, overrides: list[str]) -> float:
    """The oracle's test Sharpe after costs (NaN for a market without one, e.g. a shipped ticker)."""
    from src.utils import build

    cfg = _compose([f"env={market}", *[o for o in overrides if o.startswith(("env.", "+env."))]])
    m = build(cfg.env)
    return float(oracle_results(m, "test")["sharpe"]) if m.oracle is not None else float("nan")


def member_sharpes(metrics: dict) -> list[float]:
    return [float(m["test"]["agent"]["sharpe"]) for m in metrics["members"]]


TRAINED: list[Path] = []  # the runs this invocation trained (the others were reused)
EDGE = 0.25  # an oracle share needs an oracle this much above 0 (the share) and above buy-and-hold (the excess share)


def nonzero_holm(metrics: dict, alpha: float = 0.05) -> int:
    """Members whose test Sharpe differs from 0 (two-sided, from the probabilistic Sharpe ratio against 0), after
    Holm's correction over the members: what the null market's row must show as 0."""
    p = []
    for m in metrics["members"]:
        psr = float(m["verdict"]["test"]["psr_vs_zero"])  # P(true Sharpe > 0): exactly 0 for a member that never
        flat = float(m["test"]["agent"]["annual_volatility"]) == 0  # traded, whose Sharpe is 0, not "differs"
        p.append(1.0 if flat else 2 * min(psr, 1 - psr))
    return sum(x <= alpha for x in holm(p))


def row(market: str, metrics: dict, oracle: float, baseline: dict | None) -> dict:
    s = member_sharpes(metrics)
    pop = metrics["population"]
    bh = pop["buy_and_hold_sharpe"]
    out = {"market": market, "oracle_sharpe": oracle, "buy_and_hold_sharpe": bh, "test_sharpe": mean_interval(s),
           "members": len(s), "beat_bh_holm": pop["beat_buy_and_hold_holm"], "nonzero_holm": nonzero_holm(metrics),
           "member_sharpes": s, "separate": bool(metrics.get("separate"))}  # fmt: skip
    t = out["test_sharpe"]
    out["oracle_share"] = {k: t[k] / oracle for k in ("mean", "low", "high")} if oracle > EDGE else None
    gap = oracle - bh  # what knowing the edge adds to holding the asset
    edge = oracle > EDGE and gap > EDGE  # none where the oracle earns nothing (the null market stays flat)
    out["excess_share"] = {k: (t[k] - bh) / gap for k in ("mean", "low", "high")} if edge else None
    if baseline is not None:
        b = member_sharpes(baseline)
        out["baseline_sharpe"] = mean_interval(b)
        out["baseline_separate"] = bool(baseline.get("separate"))
        out["difference"] = paired_difference(s, b)
    return out


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:+.{digits}f}" if digits else f"{x:.0f}"


def _share(x: dict | None) -> str:
    return f"{x['mean']:.0%} [{x['low']:.0%}, {x['high']:.0%}]" if x else "n/a"


def table(rows: list[dict], baseline: bool) -> str:
    head = ("| market | oracle Sharpe | buy-and-hold | test Sharpe, mean [95% CI] | oracle share | excess share "
            "| > B&H (Holm) | ≠ 0 (Holm) |")  # fmt: skip
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if baseline:
        head += " baseline, mean | difference [95% CI] | p | p (Holm, markets) | detectable |"
        rule += "---:|---:|---:|---:|---:|"
        adjusted = holm([r["difference"]["p_value"] for r in rows])
    lines = [head, rule]
    for i, r in enumerate(rows):
        t, n = r["test_sharpe"], r["members"]
        line = (f"| {r['market']} | {_f(r['oracle_sharpe'])} | {_f(r['buy_and_hold_sharpe'])} | {_f(t['mean'])} "
                f"[{_f(t['low'])}, {_f(t['high'])}] | {_share(r['oracle_share'])} | {_share(r['excess_share'])} "
                f"| {r['beat_bh_holm']}/{n} | {r['nonzero_holm']}/{n} |")  # fmt: skip
        if baseline:
            d = r["difference"]
            line += (f" {_f(r['baseline_sharpe']['mean'])} | {_f(d['mean'])} [{_f(d['low'])}, {_f(d['high'])}] | "
                     f"{d['p_value']:.3f} | {adjusted[i]:.3f} | {d['detectable']:.2f} |")  # fmt: skip
        lines.append(line)
    return "\n".join(lines)


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
    text = report(rows, cmd, args, base, time.time() - started)
    atomic_write(args.out / "suite.json", json.dumps(rows, indent=1, default=float) + "\n")
    atomic_write(args.out / "suite.md", text)
    if args.report:
        atomic_write(args.report, text)
    print(text)


def report(rows: list[dict], cmd: str, args, base: list[str] | None, seconds: float) -> str:
    k = args.population
    seed = m_seed(args.overrides)
    lines = ["# Planted-signal suite", "", "Command:", "", "```", cmd, "```", "",
             f"Configuration: the defaults of `src/suite.py` ({' '.join(arm([]))}) then "
             f"`{' '.join([*args.overrides, args.candidate]).strip() or '(none)'}`; population={k} (seeds "
             f"{seed}..{seed + k - 1}) on every market; runs under `{args.out}`; {len(TRAINED)} runs trained in "
             f"{seconds / 60:.0f} min (finished runs of the same settings are reused).", "",
             table(rows, base is not None), ""]  # fmt: skip
    sds = [r["test_sharpe"]["std"] for r in rows if r["test_sharpe"]["std"] == r["test_sharpe"]["std"]]
    if sds:
        sd = sum(sds) / len(sds)
        lines.append(f"With {k} members and a typical member spread of {sd:.2f} Sharpe, a difference between two "
                     f"configurations' mean test Sharpe smaller than {min_detectable_difference(sd, k):.2f} "
                     "(two-sided 5%, 80% power, unpaired) is not detectable on one market.")  # fmt: skip
    lines += [
        "",
        f"Oracle share: the members' mean test Sharpe (and its interval) over the oracle's, where the oracle "
        f"earns more than {EDGE}. Excess share: (agent - buy-and-hold) / (oracle - buy-and-hold), where the "
        f"oracle beats buy-and-hold by more than {EDGE}: the part of what knowing the edge adds that the agent "
        "captured (a long-only agent scores 0% there, however high its Sharpe). The intervals are over members "
        "(training randomness) on one test period; the oracle and buy-and-hold go through the same env and "
        "costs. '> B&H': members beating buy-and-hold in the paired test after Holm over the members; '≠ 0': "
        "members whose test Sharpe differs from 0 (two-sided, from the probabilistic Sharpe ratio) after Holm.",
        "",
        "The null market has no edge: its '≠ 0' must read 0 of K (Holm holds the chance that any member shows an "
        "edge there to 5%, however the members are correlated). If it does not, suspect a leak, a cost not charged "
        "or one lucky path (rerun with another env.seed) before trusting any other row. Its mean's interval need "
        "not cover 0: all members are tested on one path, whose drift rewards any common lean.",
    ]
    for arm_name, key in (("candidate", "separate"), ("baseline", "baseline_separate")):
        apart = [r["market"] for r in rows if r.get(key)]
        if apart:
            lines += ["", f"The {arm_name} cannot train as one population (an add-on, an ensemble or another "
                      f"algorithm: src/lit_population.py), so on {', '.join(apart)} its {k} seeds ran as {k} separate "
                      "runs, one thread each: the same seeds, selection and single test."]  # fmt: skip
    if base is not None:
        lines += ["", f"Baseline: `{' '.join(base) or '(the defaults)'}`, the same markets and seeds; difference = "
                  "candidate - baseline member by member (paired t over seeds, conditional on each market's one test "
                  "path); 'p (Holm, markets)': adjusted over the markets; 'detectable': the smallest true difference "
                  "this design detects with 80% power at 5%."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
