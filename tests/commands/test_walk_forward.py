"""Walk-forward folds: consecutive, non-overlapping, trained on the past only, stitched honestly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from src.core.errors import ConfigError
from src.walk_forward import fold_bounds
from tests.conftest import ROOT, TINY


def test_fold_bounds_hand_computed():
    # 100 bars, 30% out of sample in 4 folds: 7 test bars each (28), the first test bar is 72
    b = fold_bounds(100, 4, 0.3, None)
    assert [f["train_bars"] for f in b] == [65, 72, 79, 86]
    assert all(f["val_bars"] == 7 and f["test_bars"] == 7 for f in b)
    ends = [f["train_bars"] + f["val_bars"] + f["test_bars"] for f in b]
    assert ends == [79, 86, 93, 100]  # each test period starts where the previous one ended
    assert fold_bounds(100, 2, 0.3, 10)[0] == {"train_bars": 60, "val_bars": 10, "test_bars": 15}
    with pytest.raises(ConfigError, match="too few"):
        fold_bounds(20, 10, 0.3, None)
    with pytest.raises(ConfigError, match="folds"):
        fold_bounds(100, 0, 0.3, None)


def _many(tmp_path, env: str) -> list[str]:
    """A universe or portfolio of three small tickers on one business-day calendar."""
    from tests.helpers import write_ticker_csv

    files = [write_ticker_csv(tmp_path / f"{t}_daily.csv", n, i, start) for i, (t, n, start) in
             enumerate((("aaa", 900, "2000-01-03"), ("bbb", 700, "2000-10-02"), ("ccc", 800, "2000-06-01")))]  # fmt: skip
    small = [o for o in TINY if not o.startswith(("env", "trainer.max_steps", "trainer.val_check"))]
    small += ["env.window=8", "env.episode_length=32", "trainer.max_steps=4", "trainer.val_check_interval=2"]
    return [*small, f"env={env}", "env.paths=[" + ",".join(files) + "]", "~env.ticker_costs"]


@pytest.mark.slow
@pytest.mark.parametrize("env", ["synthetic", "universe", "portfolio"])
def test_cli_walk_forward_stitches_the_folds(tmp_path, env):
    """Folds of one market, of a universe (its pooled book) and of a portfolio: consecutive test periods on the
    common calendar, each fold training on more of the past, stitched to the product of the folds' returns."""
    out = tmp_path / "wf"
    overrides = TINY if env == "synthetic" else _many(tmp_path, env)
    res = subprocess.run(
        [sys.executable, "-m", "src.walk_forward", *overrides, "walk_forward.folds=2", f"hydra.run.dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    payload = json.loads((out / "walk_forward.json").read_text())
    assert len(payload["folds"]) == 2 and (out / "walk_forward.png").stat().st_size > 0
    tests = [pd.read_csv(out / f"fold_{k}" / "trades_test.csv", index_col=0, parse_dates=True) for k in (0, 1)]
    vals = [pd.read_csv(out / f"fold_{k}" / "trades_val.csv", index_col=0, parse_dates=True) for k in (0, 1)]
    infos = [json.loads((out / f"fold_{k}" / "run_info.json").read_text())["data"] for k in (0, 1)]
    assert tests[0].index[-1] < tests[1].index[0]  # consecutive, no overlap
    assert vals[1].index[-1] < tests[1].index[0] and pd.Timestamp(infos[1]["train"]["last"]) < vals[1].index[0]
    assert infos[1]["train"]["bars"] == infos[0]["train"]["bars"] + len(tests[0])  # fold 2 trains on more past
    # the stitched curve is the product of the folds' test returns, for the agent and for buy-and-hold
    stitched = np.prod(1 + tests[0]["net_return"]) * np.prod(1 + tests[1]["net_return"])
    assert payload["oos"]["agent"]["final_equity"] == pytest.approx(stitched, rel=1e-6)
    bh = np.prod(1 + tests[0]["buy_and_hold_net_return"]) * np.prod(1 + tests[1]["buy_and_hold_net_return"])
    assert payload["oos"]["buy_and_hold"]["final_equity"] == pytest.approx(bh, rel=1e-6)
    assert payload["oos"]["agent"]["bars"] == len(tests[0]) + len(tests[1])
    md = (out / "walk_forward.md").read_text()
    assert "stitched out-of-sample folds" in md and "| fold |" in md
