"""``env=universe`` end to end: one policy across tickers, a per-ticker report and the pooled verdict."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from src.app.restore import load_agent
from src.core.errors import ConfigError
from src.train import train
from tests.conftest import TINY, compose_cfg
from tests.helpers import write_ticker_csv

SMALL = [o for o in TINY if not o.startswith("env")] + ["env.window=8", "env.episode_length=32", "env.min_trade=0"]


@pytest.fixture
def paths(tmp_path):
    return [write_ticker_csv(tmp_path / "aaa_daily.csv", 500, 1, "2000-01-03"), write_ticker_csv(tmp_path / "bbb_daily.csv", 400, 2,
            "2000-06-01")]  # fmt: skip


def _run(tmp_path, name: str, *overrides: str):
    run = tmp_path / name
    run.mkdir()
    val = train(compose_cfg([*SMALL, *overrides], run))
    return run, val


def test_a_universe_run_reports_every_ticker_and_the_pooled_verdict(tmp_path, paths):
    run, val = _run(tmp_path, "u", "env=universe", f"env.paths=[{paths[0]},{paths[1]}]", "~env.ticker_costs",
                    "+env.ticker_costs.bbb.spread_bps=50")  # fmt: skip
    info = json.loads((run / "run_info.json").read_text())
    assert set(info["universe"]["tickers"]) == {"aaa", "bbb"} and info["data"]["tickers"] == ["aaa", "bbb"]
    v = info["universe"]["pooled_verdict"]
    assert v["tickers"] == 2 and v["dates"] > 10 and 0 <= v["p_value"] <= 1
    report = (run / "report.md").read_text()
    assert "| aaa |" in report and "| bbb |" in report and "Pooled verdict" in report
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["agent"]["sharpe"] == pytest.approx(val)  # selection read the pooled book
    costs = info["data"]["markets"]
    assert costs["bbb"]["costs"]["spread_bps"] == 50 and costs["aaa"]["costs"]["spread_bps"] == 2
    best = str(run / "checkpoints" / "best.ckpt")
    with pytest.raises(ConfigError, match="trained on a universe"):  # one ticker alone would get its own split
        load_agent(best, OmegaConf.create({"_target_": "src.data.load_market", "path": paths[1]}))
    assert info["data"]["sha256"] == "+".join(info["data"]["markets"][t]["sha256"] for t in ("aaa", "bbb"))


def test_a_universe_of_one_ticker_trains_as_that_ticker_alone(tmp_path, paths):
    """Drawn by bars, one ticker's episodes start where the single-asset env's do: the same weights and the same
    test result."""
    costs = ["env.costs.commission_bps=1", "env.costs.spread_bps=2", "env.costs.slippage_bps=2",
             "env.costs.borrow_bps=50", "env.costs.margin_rate_bps=600"]  # fmt: skip
    one, _ = _run(tmp_path, "one", "env=universe", f"env.paths=[{paths[0]}]", "~env.ticker_costs",
                  "env.weights=bars", *costs)  # fmt: skip
    alone, _ = _run(tmp_path, "alone", "env=csv", f"env.path={paths[0]}", *costs)
    a = json.loads((one / "metrics.json").read_text())["test"]["agent"]
    b = json.loads((alone / "metrics.json").read_text())["test"]["agent"]
    assert a["sharpe"] == pytest.approx(b["sharpe"], abs=1e-6) and a["turnover"] == pytest.approx(b["turnover"])
    wa = torch.load(one / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    wb = torch.load(alone / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("override", ["augmentation=jitter", "curriculum=adaptive", "population=2"])
def test_what_a_universe_cannot_train_is_refused(tmp_path, paths, override, capsys):
    with pytest.raises((ConfigError, SystemExit)) as e:
        _run(tmp_path, "r", "env=universe", f"env.paths=[{paths[0]},{paths[1]}]", "~env.ticker_costs", override)
    assert "env=universe" in str(e.value) + capsys.readouterr().err
    assert not (tmp_path / "r" / "config.yaml").exists()
