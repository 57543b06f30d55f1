"""src.paper: the ledger follows the backtest bar by bar, survives a kill mid-write, and is idempotent."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from src.app.restore import load_policy
from src.core.errors import ConfigError, DataError
from src.core.utils import build
from src.evaluation.walk import evaluate_split
from src.paper import connect, ledgers, report, step_account
from tests.conftest import ROOT, write_bars

LATER = "2100-01-01"  # "now" for the tests: every bar of the file is complete


def _cfg(account, **kw):
    base = {"account": str(account), "ckpt_path": None, "data": None, "from": None, "now": LATER,
            "max_stale": None, "command": "step"}  # fmt: skip
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("costly", [False, True])
def test_bar_by_bar_paper_trading_is_the_backtest(trained_agent, tmp_path, costly):
    """The test split's last 20 bars, one invocation per new bar (the file growing by one row each time): the
    same positions, costs and equity as evaluating those bars in one go; a second run changes nothing. ``costly``:
    the same network with a cash rate, borrow and margin fees and a no-trade band the agent's moves straddle."""
    _, _, bars, ckpt, _ = trained_agent
    if costly:
        import torch

        saved = torch.load(ckpt, weights_only=False)
        env = saved["hyper_parameters"]["cfg"]["env"]
        env["min_trade"] = 0.0005
        env["costs"].update(cash_rate_bps=400.0, borrow_bps=50.0, margin_rate_bps=600.0, spread_bps=10.0)
        ckpt = str(tmp_path / "costly.ckpt")
        torch.save(saved, ckpt)
    module, _, cfg = load_policy(ckpt)
    market = build(cfg.env)
    tr, va, te = (b - a for a, b in (market.splits[s] for s in ("train", "val", "test")))
    last20 = OmegaConf.merge(cfg.env, {"split": None})
    last20.split = {"train_bars": tr, "val_bars": va + te - 20, "test_bars": 20}  # same training statistics
    want = evaluate_split(build(last20), "test", module.policy())
    first = len(bars) - 21  # the decision bar before the 20 (in the file's rows)
    csv = tmp_path / "abc_daily.csv"
    write_bars(csv, bars.iloc[: first + 1])
    acct = tmp_path / "acct.db"
    assert step_account(_cfg(acct, ckpt_path=ckpt, data=str(csv), **{"from": str(bars.index[first].date())})) == 0
    for k in range(first + 2, len(bars) + 1):  # one new bar a day
        write_bars(csv, bars.iloc[:k])
        assert step_account(_cfg(acct)) == 1
    got = ledgers(connect(str(acct)))
    for book in ("agent", "buy_and_hold"):
        g, w = got[book], want[book].ledger
        assert list(g.index) == list(w.index) and len(g) == 20
        for col in ("position", "turnover", "cost", "net_return", "equity"):
            assert g[col].to_numpy() == pytest.approx(w[col].to_numpy(), rel=1e-5, abs=1e-7), (book, col)
    assert got["agent"]["position"].abs().max() > 0
    if costly:  # the band held the book on some bars and not on others; cash earned interest
        traded = got["agent"]["turnover"].to_numpy() > 0
        assert 0 < traded.sum() < 20 and (got["agent"]["financing"] != 0).all()
    before = pd.read_sql_query("SELECT * FROM ledger", sqlite3.connect(acct))
    assert step_account(_cfg(acct)) == 0  # run twice: nothing new, nothing changed
    assert pd.read_sql_query("SELECT * FROM ledger", sqlite3.connect(acct)).equals(before)
    out = report(_cfg(acct))
    assert out["metrics"]["agent"]["final_equity"] == pytest.approx(float(want["agent"].ledger["equity"].iloc[-1]),
                                                                    rel=1e-5)  # fmt: skip


@pytest.mark.slow
def test_a_kill_mid_write_loses_nothing_and_repeats_nothing(trained_agent, tmp_path):
    """Killed inside a bar's transaction (between the agent's and buy-and-hold's rows), the account holds the bars
    before it, whole; the next run finishes, and the ledger equals an account that was never killed."""
    _, csv, bars, ckpt, _ = trained_agent
    start = str(bars.index[len(bars) - 31].date())
    cmd = [sys.executable, "-m", "src.paper", f"ckpt_path={ckpt}", f"data={csv}", "--from", start, f"now={LATER}"]
    killed, clean = tmp_path / "killed.db", tmp_path / "clean.db"
    res = subprocess.run([*cmd, f"account={killed}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRADELAB_PAPER_CRASH_AFTER": "7"})  # fmt: skip
    assert res.returncode == 9, res.stderr[-2000:]
    rows = sqlite3.connect(killed).execute("SELECT book, COUNT(*) FROM ledger GROUP BY book").fetchall()
    assert dict(rows) == {"agent": 7, "buy_and_hold": 7}  # the 8th bar's half-written rows rolled back
    again = subprocess.run([sys.executable, "-m", "src.paper", f"account={killed}", f"now={LATER}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0 and "23 new bars" in again.stdout, again.stderr[-2000:]
    assert subprocess.run([*cmd, f"account={clean}"], cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    a, b = (pd.read_sql_query("SELECT * FROM ledger ORDER BY bar, book", sqlite3.connect(p)) for p in (killed, clean))
    assert len(a) == 60 and a.equals(b)
    rep = subprocess.run([sys.executable, "-m", "src.paper", "report", f"account={killed}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rep.returncode == 0 and "buy and hold" in rep.stdout, rep.stderr[-2000:]


def test_an_account_refuses_another_model_or_a_rewritten_history(trained_agent, tmp_path):
    """The account pins its checkpoint (SHA-256) and the bars its decisions observed: a retrained checkpoint at
    the same path, or an earlier bar revised in the file, is refused in one line; so is an unopened account."""
    import shutil

    import torch

    _, _, bars, ckpt, _ = trained_agent
    mine = tmp_path / "best.ckpt"
    shutil.copy(ckpt, mine)
    csv = tmp_path / "abc_daily.csv"
    write_bars(csv, bars.iloc[:380])
    acct = tmp_path / "acct.db"
    with pytest.raises(ConfigError, match="has not been opened"):
        step_account(_cfg(acct))
    assert step_account(_cfg(acct, ckpt_path=str(mine), data=str(csv), **{"from": str(bars.index[370].date())})) == 9
    write_bars(csv, bars.iloc[:385])
    revised = bars.iloc[:385].copy()
    revised.iloc[372, revised.columns.get_loc("volume")] *= 1.5  # a corrected volume the account already observed
    write_bars(csv, revised)
    with pytest.raises(DataError, match="rewritten history"):
        step_account(_cfg(acct))
    write_bars(csv, bars.iloc[:385])
    saved = torch.load(mine, weights_only=False)
    saved["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in saved["state_dict"].items()}
    torch.save(saved, mine)  # "retrained" at the same path
    with pytest.raises(ConfigError, match="changed since the account was opened"):
        step_account(_cfg(acct))
