"""Paper trading: a crash-safe ledger of a trained agent followed bar by bar.

``python -m src.paper account=acct.db ckpt_path=<best.ckpt> data=<csv> from=<date>`` opens an account (one SQLite
file) whose first decision is taken at the close of the bar dated ``from``; ``python -m src.paper account=acct.db``
then processes every complete bar the CSV has gained since the last invocation, exactly once, and
``python -m src.paper report account=acct.db`` prints the account's metrics and its verdict against buy-and-hold
since the start (:mod:`src.evaluation.metrics`, :mod:`src.evaluation.verdict`: the same figures as every report).

Each bar is one transaction: the decision taken at the close of bar t (the deterministic policy on the window
ending at t and the current drifted weight, normalised with the checkpoint's statistics: :mod:`src.predict`), the
fill over bar t+1 through :class:`src.live.broker.SimulatedBroker` (the env's accounting), and the new equity, with
buy-and-hold beside it. A kill at any moment leaves the ledger at a bar boundary (SQLite rolls the open
transaction back); running again continues from there, and running twice changes nothing. Bars that are not
complete (``now`` before their end) are left for a later invocation.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from src.app.restore import load_policy
from src.core.checks import mandatory
from src.core.errors import ConfigError, DataError
from src.core.utils import one_line_errors
from src.data.loader import file_sha256, load_ohlcv, resolve_path
from src.data.market import bar_series
from src.envs.market_env import Obs
from src.evaluation.walk import EvalResult, ledger_metrics
from src.live.bars import bar_at, check_bars, normalised_features
from src.live.broker import SimulatedBroker

COLUMNS = ("position", "turnover", "cost", "gross_return", "dividend", "financing", "net_return", "risk_free",
           "equity", "drifted")  # fmt: skip
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger (bar TEXT NOT NULL, book TEXT NOT NULL, decided_at TEXT NOT NULL, "
    "target REAL NOT NULL, " + ", ".join(f"{c} REAL NOT NULL" for c in COLUMNS) + ", PRIMARY KEY (bar, book))",
)
BOOKS = ("agent", "buy_and_hold")
CALIBRATED_BARS = 120  # below this the report gives no verdict (the test's false positives exceed ~7%)


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN / COMMIT below
    db.execute("PRAGMA synchronous=FULL")
    for stmt in SCHEMA:
        db.execute(stmt)
    return db


def meta(db: sqlite3.Connection) -> dict:
    return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}


def history_hash(bars: pd.DataFrame, upto: int) -> str:
    """SHA-256 of the file's bars up to row ``upto`` (inclusive): what every decision so far observed."""
    rows = bars.iloc[: upto + 1][["open", "high", "low", "close", "volume"]]
    return hashlib.sha256(np.ascontiguousarray(rows.to_numpy(np.float64)).tobytes() + str(rows.index[-1]).encode()
                          ).hexdigest()  # fmt: skip


def open_account(db: sqlite3.Connection, want: dict) -> dict:
    """Record the account's checkpoint (path and SHA-256), data file and first decision bar; refused if it was
    opened with others."""
    have = meta(db)
    if have:
        if any(have.get(k) != v for k, v in want.items()):
            raise ConfigError(f"account: already opened with {have}; use another account file for {want}")
        return have
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in want.items()])
    db.execute("COMMIT")
    return want


def last_state(db: sqlite3.Connection) -> dict[str, tuple[str, float, float]] | None:
    """Each book's last bar, equity and drifted weight; None before the first bar."""
    row = db.execute("SELECT MAX(bar) FROM ledger").fetchone()[0]
    if row is None:
        return None
    q = "SELECT book, equity, drifted FROM ledger WHERE bar = ?"
    return {book: (row, eq, w) for book, eq, w in db.execute(q, (row,))}


def step_account(cfg: DictConfig) -> int:
    """Process every complete bar since the last one; returns how many were written."""
    db = connect(cfg.account)
    acct = meta(db)
    opening = cfg.get("ckpt_path") is not None
    if not acct and not opening:
        raise ConfigError(f"account: {cfg.account} has not been opened: give ckpt_path=, data= and from=")
    if opening and (cfg.get("data") is None or cfg.get("from") is None):
        raise ConfigError("account: opening one needs ckpt_path=, data= and from=<the first decision bar's date>")
    ckpt = str(Path(cfg.ckpt_path if opening else acct["ckpt_path"]).resolve())
    module, norm, train_cfg = load_policy(ckpt, "src.paper")
    if int(train_cfg.get("population", 1) or 1) > 1:
        raise ConfigError("account: a population is several agents; open one account per member's own run")
    data = str(resolve_path(cfg.data)) if opening else acct["data"]
    bars = load_ohlcv(data, max_gap=train_cfg.env.get("max_gap"))
    start = bar_at(bars, cfg.get("from") if opening else acct["from"], data, "from")
    want = {"ckpt_path": ckpt, "ckpt_sha256": file_sha256(Path(ckpt)), "data": data, "from": str(bars.index[start])}
    if not acct:
        check_bars(bars.iloc[: start + 1], data, norm, bars.index[start] + pd.Timedelta(days=3650), None,
                   bool(cfg.get("allow_other_ticker")))  # fmt: skip
        acct = open_account(db, want)  # checked first: a bad path or date leaves no account behind
    elif want["ckpt_sha256"] != acct.get("ckpt_sha256"):
        raise ConfigError(f"account: {ckpt} changed since the account was opened (SHA-256); its decisions would "
                          "come from another model: open a new account")  # fmt: skip
    now = pd.Timestamp.now(tz="UTC") if cfg.get("now") is None else pd.Timestamp(cfg.now)
    now = now.tz_localize("UTC") if now.tzinfo is None else now
    step = pd.Series(bars.index).diff().median()
    complete = int((bars.index + step <= now).sum())  # bars are in order: the complete ones come first
    if complete == 0:
        return 0
    check_bars(bars.iloc[:complete], data, norm, now, cfg.get("max_stale"), bool(cfg.get("allow_other_ticker")))
    w = int(norm["window"])
    feats = normalised_features(bars, norm)
    fill, band = str(train_cfg.env.fill), float(train_cfg.env.min_trade)
    series = bar_series(bars, fill)
    broker = SimulatedBroker(series, module.market.costs, band, fill, module.market.position_limits)
    bh = SimulatedBroker(series, module.market.costs, band, fill, (-np.inf, np.inf))  # not bound by the agent's limits
    policy = module.policy()
    state = last_state(db)
    if state is None:
        t = start
    else:
        last = pd.Timestamp(state["agent"][0])
        if last not in bars.index:
            raise DataError(f"{data}: the account's last bar {last} is no longer in the file (history rewritten)")
        t = int(bars.index.get_loc(last))
        if history_hash(bars, t) != acct.get("history_sha256"):
            raise DataError(f"{data}: bars up to {last}, which the account's decisions observed, have changed "
                            "since (a rewritten history); open a new account on the revised file")  # fmt: skip
    books = {b: (1.0, 0.0) for b in BOOKS} if state is None else {b: state[b][1:] for b in BOOKS}
    written = 0
    crash_after = int(os.environ.get("TRADELAB_PAPER_CRASH_AFTER", "-1"))  # tests: die inside a transaction
    names = len(getattr(policy, "names", ["agent"]))  # an ensemble acts with its aggregate (row 0)
    while t + 1 < complete:
        targets = {}
        with torch.no_grad():
            eq, held = books["agent"]
            obs = Obs(feats[t - w + 1 : t + 1][None].expand(names, -1, -1), torch.full((names, 1), held))
            targets["agent"] = float(policy(obs).reshape(-1)[0]) if eq > module.market.min_equity else 0.0
        targets["buy_and_hold"] = 1.0 if books["buy_and_hold"][0] > module.market.min_equity else 0.0
        db.execute("BEGIN IMMEDIATE")
        now_last = db.execute("SELECT MAX(bar) FROM ledger").fetchone()[0]
        if now_last != (None if state is None and written == 0 else str(bars.index[t])):
            db.execute("ROLLBACK")
            raise ConfigError(f"account: another process is updating {cfg.account}; run one at a time")
        for book in BOOKS:
            eq, held = books[book]
            f = (broker if book == "agent" else bh).execute(held, targets[book], t + 1)
            eq = eq * (1 + f.net_return)
            db.execute(f"INSERT INTO ledger VALUES (?, ?, ?, ?, {', '.join('?' * len(COLUMNS))})",
                       (str(bars.index[t + 1]), book, str(bars.index[t]), f.target, f.position, f.turnover, f.cost,
                        f.gross_return, f.dividend, f.financing, f.net_return, f.risk_free, eq, f.drifted))  # fmt: skip
            books[book] = (eq, f.drifted)
            if written == crash_after:
                os._exit(9)  # a kill between the two books' rows: the transaction must roll back
        db.execute("INSERT OR REPLACE INTO meta VALUES ('history_sha256', ?)", (json.dumps(history_hash(bars, t + 1)),))
        db.execute("COMMIT")
        written += 1
        t += 1
    return written


def ledgers(db: sqlite3.Connection) -> dict[str, pd.DataFrame]:
    out = {}
    for book in BOOKS:
        df = pd.read_sql_query("SELECT * FROM ledger WHERE book = ? ORDER BY bar", db, params=(book,))
        df.index = pd.DatetimeIndex(pd.to_datetime(df.pop("bar"), utc=True), name="timestamp")
        out[book] = df
    return out


def report(cfg: DictConfig) -> dict:
    """The account's metrics and its verdict against buy-and-hold since its start."""
    from src.evaluation.verdict import verdict
    from src.reports.run import metrics_table

    db = connect(cfg.account)
    acct = meta(db)
    if not acct:
        raise ConfigError(f"account: {cfg.account} has not been opened")
    led = ledgers(db)
    if len(led["agent"]) < 2:
        raise DataError(f"account: {cfg.account} has {len(led['agent'])} bars; nothing to report yet")
    _, norm, _ = load_policy(acct["ckpt_path"], "src.paper")
    bpy = float(norm["bars_per_year"])
    res = {"paper": {b: EvalResult("paper", df, ledger_metrics(df, bpy)) for b, df in led.items()}}
    judged = verdict(res, bpy, in_sample=False)
    if len(led["agent"]) < CALIBRATED_BARS:  # the paired test over-rejects on short samples (measured)
        judged["sentence"] = (
            f"{len(led['agent'])} bars are too few for a verdict: the paired Sharpe test rejects up to 14% of the "
            "time at 20 bars under the null (nominal 5%), 6-7% at 120 (experiments/statistics_calibration/results.md);"
            " the figures above are descriptive."
        )
    a, b = led["agent"]["equity"], led["buy_and_hold"]["equity"]
    at = np.unique(np.linspace(0, len(a) - 1, min(len(a), 12)).round().astype(int))  # the curve, 12 points
    head = ["| bar | agent equity | buy-and-hold equity |", "|---|---:|---:|"]
    curve = "\n".join(head + [f"| {a.index[i]} | {a.iloc[i]:.4f} | {b.iloc[i]:.4f} |" for i in at])
    title = f"paper account {cfg.account}: {acct['ckpt_path']} on {acct['data']} from {acct['from']}"
    print(f"{title}, {len(a)} bars\n\n{curve}\n\n{metrics_table(res)}\n\n{judged['sentence']}", flush=True)
    return {"metrics": {b: r.metrics for b, r in res["paper"].items()}, "verdict": judged}


@one_line_errors
def run(cfg: DictConfig):
    mandatory(cfg)
    path = Path(str(cfg.account))
    existed = path.exists()
    if not existed and (cfg.get("command") == "report" or cfg.get("ckpt_path") is None):
        raise ConfigError(f"account: {path} does not exist; open one with ckpt_path=, data= and from=")
    try:
        if cfg.get("command") == "report":
            return report(cfg)
        n = step_account(cfg)
    except BaseException:
        if not existed:  # the refused opening of a new account: nothing of it stays
            discard_unopened(path)
        raise
    print(f"{cfg.account}: {n} new bar{'s' * (n != 1)}", flush=True)
    return n


def discard_unopened(path: Path) -> None:
    """Delete ``path`` (and SQLite's journal beside it) if it holds no opened account."""
    if path.is_file():
        db = sqlite3.connect(path)
        try:
            opened = db.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchone() is not None and (
                db.execute("SELECT COUNT(*) FROM meta").fetchone()[0] > 0
            )
        finally:
            db.close()
        if not opened:
            for p in (path, path.with_name(path.name + "-journal")):
                p.unlink(missing_ok=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="paper")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "report":  # `python -m src.paper report account=...`
        sys.argv = [sys.argv[0], *sys.argv[2:], "command=report"]
    if "--from" in sys.argv[:-1]:  # `--from <date>`: the from=<date> override
        i = sys.argv.index("--from")
        sys.argv[i : i + 2] = [f"from={sys.argv[i + 1]}"]
    main()
