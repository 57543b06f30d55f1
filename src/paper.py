"""Paper trading: a crash-safe ledger of a trained agent followed bar by bar.

``python -m src.paper account=acct.db ckpt_path=<best.ckpt> data=<csv> from=<date>`` opens an account (one SQLite
file) whose first decision is taken at the close of the bar dated ``from``; ``python -m src.paper account=acct.db``
then processes every complete bar the CSV has gained since the last invocation, exactly once, and
``python -m src.paper report account=acct.db`` prints the account's metrics and its verdict against buy-and-hold
since the start (:mod:`src.metrics`, :mod:`src.verdict`: the same figures as every report).

Each bar is one transaction: the decision taken at the close of bar t (the deterministic policy on the window
ending at t and the current drifted weight, normalised with the checkpoint's statistics: :mod:`src.predict`), the
fill over bar t+1 through :class:`src.broker.SimulatedBroker` (the env's accounting), and the new equity, with
buy-and-hold beside it. A kill at any moment leaves the ledger at a bar boundary (SQLite rolls the open
transaction back); running again continues from there, and running twice changes nothing. Bars that are not
complete (``now`` before their end) are left for a later invocation.
"""

from __future__ import annotations

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

from src.broker import SimulatedBroker
from src.data.features import compute_features
from src.data.loader import load_ohlcv, resolve_path
from src.data.market import NORM_CLIP, bar_series
from src.envs.market_env import Obs
from src.errors import ConfigError, DataError
from src.evaluation import EvalResult, ledger_metrics
from src.predict import check_bars, load_policy
from src.utils import one_line_errors

COLUMNS = ("position", "turnover", "cost", "gross_return", "dividend", "financing", "net_return", "risk_free",
           "equity", "drifted")  # fmt: skip
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger (bar TEXT NOT NULL, book TEXT NOT NULL, decided_at TEXT NOT NULL, "
    "target REAL NOT NULL, " + ", ".join(f"{c} REAL NOT NULL" for c in COLUMNS) + ", PRIMARY KEY (bar, book))",
)
BOOKS = ("agent", "buy_and_hold")


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN / COMMIT below
    db.execute("PRAGMA synchronous=FULL")
    for stmt in SCHEMA:
        db.execute(stmt)
    return db


def meta(db: sqlite3.Connection) -> dict:
    return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}


def open_account(db: sqlite3.Connection, ckpt_path: str, data: str, start: str) -> dict:
    """Record the account's checkpoint, data file and first decision bar (refused if it already has others)."""
    have = meta(db)
    want = {"ckpt_path": str(Path(ckpt_path).resolve()), "data": str(resolve_path(data)), "from": str(start)}
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
    acct = meta(db) if cfg.get("ckpt_path") is None else open_account(db, cfg.ckpt_path, cfg.data, cfg.get("from"))
    if not acct:
        raise ConfigError(f"account: {cfg.account} has not been opened: give ckpt_path=, data= and from=")
    module, norm, train_cfg = load_policy(acct["ckpt_path"])
    bars = load_ohlcv(acct["data"], max_gap=train_cfg.env.get("max_gap"))
    now = pd.Timestamp.now(tz="UTC") if cfg.get("now") is None else pd.Timestamp(cfg.now)
    now = now.tz_localize("UTC") if now.tzinfo is None else now
    step = pd.Series(bars.index).diff().median()
    complete = int((bars.index + step <= now).sum())  # bars are in order: the complete ones come first
    if complete == 0:
        return 0
    check_bars(bars.iloc[:complete], acct["data"], norm, now, cfg.get("max_stale"), True)
    start = pd.Timestamp(acct["from"])
    start = start.tz_localize("UTC") if start.tzinfo is None else start
    if start not in bars.index:
        raise DataError(f"{acct['data']}: from={acct['from']} is not a bar of the file")
    w = int(norm["window"])
    z = np.clip((compute_features(bars).to_numpy(np.float64) - np.asarray(norm["mean"])) / np.asarray(norm["std"]),
                -NORM_CLIP, NORM_CLIP)  # fmt: skip
    feats = torch.as_tensor(z, dtype=torch.float32)
    fill, band = str(train_cfg.env.fill), float(train_cfg.env.min_trade)
    series = bar_series(bars, fill)
    broker = SimulatedBroker(series, module.market.costs, band, fill, module.market.position_limits)
    bh = SimulatedBroker(series, module.market.costs, band, fill, (-np.inf, np.inf))  # not bound by the agent's limits
    policy = module.policy()
    state = last_state(db)
    t = bars.index.get_loc(start) if state is None else bars.index.get_loc(pd.Timestamp(state["agent"][0]))
    books = {b: (1.0, 0.0) for b in BOOKS} if state is None else {b: state[b][1:] for b in BOOKS}
    if t < w + 34:
        raise DataError(f"{acct['data']}: from={acct['from']} leaves fewer than the window + warm-up bars before it")
    written = 0
    crash_after = int(os.environ.get("TRADELAB_PAPER_CRASH_AFTER", "-1"))  # tests: die inside a transaction
    while t + 1 < complete:
        decided = bars.index[t]
        targets = {}
        with torch.no_grad():
            eq, held = books["agent"]
            names = len(getattr(policy, "names", ["agent"]))
            obs = Obs(feats[t - w + 1 : t + 1][None].expand(names, -1, -1), torch.full((names, 1), held))
            alive = eq > module.market.min_equity
            targets["agent"] = float(policy(obs).reshape(-1)[0]) if alive else 0.0
        targets["buy_and_hold"] = 1.0
        db.execute("BEGIN IMMEDIATE")
        for book in BOOKS:
            eq, held = books[book]
            f = (broker if book == "agent" else bh).execute(held, targets[book], t + 1)
            eq = eq * (1 + f.net_return)
            db.execute(f"INSERT INTO ledger VALUES (?, ?, ?, ?, {', '.join('?' * len(COLUMNS))})",
                       (str(bars.index[t + 1]), book, str(decided), f.target, f.position, f.turnover, f.cost,
                        f.gross_return, f.dividend, f.financing, f.net_return, f.risk_free, eq, f.drifted))  # fmt: skip
            books[book] = (eq, f.drifted)
            if written == crash_after:
                os._exit(9)  # a kill between the two books' rows: the transaction must roll back
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
    from src.reporting import metrics_table
    from src.verdict import verdict

    db = connect(cfg.account)
    acct = meta(db)
    if not acct:
        raise ConfigError(f"account: {cfg.account} has not been opened")
    led = ledgers(db)
    if len(led["agent"]) < 2:
        raise DataError(f"account: {cfg.account} has {len(led['agent'])} bars; nothing to report yet")
    _, norm, _ = load_policy(acct["ckpt_path"])
    bpy = float(norm["bars_per_year"])
    res = {"paper": {b: EvalResult("paper", df, ledger_metrics(df, bpy)) for b, df in led.items()}}
    judged = verdict(res, bpy, in_sample=False)
    print(f"paper account {cfg.account}: {acct['ckpt_path']} on {acct['data']} from {acct['from']}, "
          f"{len(led['agent'])} bars\n\n{metrics_table(res)}\n\n{judged['sentence']}", flush=True)  # fmt: skip
    return {"metrics": {b: r.metrics for b, r in res["paper"].items()}, "verdict": judged}


@one_line_errors
def run(cfg: DictConfig):
    if cfg.get("command") == "report":
        return report(cfg)
    n = step_account(cfg)
    print(f"{cfg.account}: {n} new bar{'s' * (n != 1)}", flush=True)
    return n


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
