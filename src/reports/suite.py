"""The suite's markdown report: the table of :func:`src.suite.row` results and what it does and cannot show."""

from __future__ import annotations

from collections import Counter

from src.evaluation.stats import holm, min_detectable_difference


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:+.{digits}f}" if digits else f"{x:.0f}"


def _share(x: dict | None) -> str:
    return f"{x['mean']:.0%} [{x['low']:.0%}, {x['high']:.0%}]" if x else "n/a"


def table(rows: list[dict], baseline: bool) -> str:
    head = ("| market | oracle Sharpe | buy-and-hold | test Sharpe, mean [95% CI] | oracle share | excess share "
            "| > B&H (Holm) | > 0 (Holm) |")  # fmt: skip
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
                f"| {r['beat_bh_holm']}/{n} | {r['edge_holm']}/{n} |")  # fmt: skip
        if baseline:
            d = r["difference"]
            line += (f" {_f(r['baseline_sharpe']['mean'])} | {_f(d['mean'])} [{_f(d['low'])}, {_f(d['high'])}] | "
                     f"{d['p_value']:.3f} | {adjusted[i]:.3f} | {d['detectable']:.2f} |")  # fmt: skip
        lines.append(line)
    return "\n".join(lines)


def report(rows: list[dict], cmd: str, conf: dict, seconds: float, trained: int) -> str:
    """``conf``: population, seed, arm (the suite's defaults), shared/candidate/baseline overrides, out, edge/gap
    gates and the flag threshold function."""
    k, seed, base = conf["population"], conf["seed"], conf["baseline"]
    lines = ["# Planted-signal suite", "", "Command:", "", "```", cmd, "```", "",
             f"Configuration: the defaults of `src/suite.py` ({' '.join(conf['arm'])}) then "
             f"`{' '.join([*conf['shared'], conf['candidate']]).strip() or '(none)'}`; population={k} (seeds "
             f"{seed}..{seed + k - 1}) on every market; runs under `{conf['out']}`; {trained} runs trained in "
             f"{seconds / 60:.0f} min (finished runs of the same settings are reused).", "",
             table(rows, base is not None), ""]  # fmt: skip
    sds = [r["test_sharpe"]["std"] for r in rows if r["test_sharpe"]["std"] == r["test_sharpe"]["std"]]
    if sds:
        sd = (sum(x * x for x in sds) / len(sds)) ** 0.5
        lines.append(f"With {k} members and a typical member spread of {sd:.2f} Sharpe (root mean square over the "
                     f"markets), a difference between two configurations' mean test Sharpe smaller than "
                     f"{min_detectable_difference(sd, k):.2f} (two-sided 5%, 80% power, unpaired) is not detectable "
                     "on one market.")  # fmt: skip
    runs = [r for row in rows for r in row.get("runs", [])]
    if runs:
        bars = sorted(r["test_bars"] for r in runs)[len(runs) // 2]
        flag = conf["threshold"](bars, runs[0]["bars_per_year"], k)
    lines += [
        "",
        f"Oracle share: the members' mean test Sharpe (and its interval) over the oracle's, where the oracle "
        f"earns more than {conf['edge']}. Excess share: (agent - buy-and-hold) / (oracle - buy-and-hold), where the "
        f"oracle beats buy-and-hold by more than {conf['gap']}: the part of what knowing the edge adds that the agent "
        "captured (a long-only agent scores 0% there, however high its Sharpe). The intervals are over members "
        "(training randomness) on one test path per market: they say how far another seed lands, not another "
        "period; the oracle and buy-and-hold go through the same env and costs. '> B&H': members beating "
        "buy-and-hold in the paired test after Holm over the members; '> 0': members whose test Sharpe is above 0 "
        "(one-sided, from the probabilistic Sharpe ratio) after Holm.",
        "",
        "The null market has no edge: its '> 0' must read 0 of K (Holm holds the chance that any member shows an "
        "edge there to 5%, however the members are correlated). If it does not, suspect a leak, a cost not charged "
        "or one lucky path (rerun with another env.seed) before trusting any other row. Its mean's interval need "
        "not cover 0: all members are tested on one path, whose drift rewards any common lean."
        + (f" What this check can see: on {bars} test bars a member needs an annual Sharpe of about {flag:.1f} to "
           "be flagged (Holm's first step; members close to a flagged one then follow), so the null row catches an "
           "edge or a leak of that size or more (the leakage canary's Sharpe is far above), not a smaller one."
           if runs else ""),
    ]  # fmt: skip
    for arm_name, key in (("candidate", "separate"), ("baseline", "baseline_separate")):
        apart = [r["market"] for r in rows if r.get(key)]
        if apart:
            lines += ["", f"The {arm_name} cannot train as one population (an add-on, an ensemble or another "
                      f"algorithm: src/training/population.py), so on {', '.join(apart)} its {k} seeds ran as {k} "
                      "separate runs, one thread each: the same seeds, selection and single test."]  # fmt: skip
    if base is not None:
        lines += ["", f"Baseline: `{' '.join(base) or '(the defaults)'}`, the same markets and seeds; difference = "
                  "candidate - baseline member by member (paired t over seeds, conditional on each market's one test "
                  "path); 'p (Holm, markets)': adjusted over the markets; 'detectable': the smallest true difference "
                  "this design detects with 80% power at 5%."]  # fmt: skip
    revisions = Counter(r["revision"] for row in rows for r in [*row.get("runs", []), *row.get("baseline_runs", [])])
    if revisions:
        lines += ["", "Code revisions of the runs, both arms (each run's run_info.json): "
                  + ", ".join(f"{rev} ({n} run{'s' * (n != 1)})" for rev, n in revisions.most_common())
                  + ("." if len(revisions) == 1 else "; runs of several revisions are compared only where the "
                     "changes between them do not touch training (say so in the notes).")]  # fmt: skip
    return "\n".join(lines) + "\n"
