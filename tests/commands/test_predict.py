"""src.predict: tomorrow's weight from a checkpoint and a CSV, observed exactly as training observed it."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from src.app.restore import load_policy
from src.core.errors import ConfigError, DataError
from src.core.utils import build
from src.data.features import compute_features
from src.data.market import load_market
from src.envs.market_env import Obs
from src.live.bars import drifted_weight, observation
from src.predict import predict
from tests.conftest import ROOT, write_bars


def _cfg(ckpt, data, **kw):
    from omegaconf import OmegaConf

    base = {"ckpt_path": ckpt, "data": data, "position": None, "now": None, "max_stale": None,
            "allow_other_ticker": False, "json": False}  # fmt: skip
    return OmegaConf.create({**base, **kw})


def test_the_observation_is_the_training_markets_and_so_is_the_action(trained_agent):
    """On the training file, the features window of the last bar is the training market's, to the bit; the target
    is the policy's deterministic action on it; the trade is target - current."""
    _, csv, bars, ckpt, _ = trained_agent
    module, norm, cfg = load_policy(ckpt)
    market = build(cfg.env)
    w = market.window
    got = observation(bars, norm, csv)[0]
    assert torch.equal(got, market.features[-w:])
    out = predict(_cfg(ckpt, csv, now=str(bars.index[-1] + pd.Timedelta(days=2))))
    with torch.no_grad():
        want = module.model(Obs(market.features[-w:][None], torch.zeros(1, 1)))[0].mean
    assert out["target_weight"] == pytest.approx(float(want[0]), abs=1e-6)
    band = abs(out["target_weight"]) < cfg.env.min_trade  # a smaller move is not traded
    assert out["current_weight"] == 0.0 and out["trade"] == (0.0 if band else pytest.approx(out["target_weight"]))
    lo, hi = cfg.env.position_limits
    assert lo <= out["target_weight"] <= hi


def test_a_longer_file_keeps_the_checkpoints_normalisation(trained_agent):
    """New bars appended: the statistics are the checkpoint's, i.e. the training file's training split (not the
    longer file's, whose split would move); the last window is normalised with them."""
    d, _, _, ckpt, more = trained_agent  # the same history, 60 bars more
    csv = write_bars(d / "abc_daily.csv.new", more)
    _, norm, cfg = load_policy(ckpt)
    trained_market, longer = build(cfg.env), load_market(csv, window=8)
    assert norm["mean"] == pytest.approx(list(trained_market.norm_mean), rel=1e-12)
    assert norm["mean"] != pytest.approx(list(longer.norm_mean), rel=1e-6)
    got = observation(more, norm, csv)[0].double()
    x = torch.as_tensor(compute_features(more).to_numpy()[-8:])
    want = ((x - torch.as_tensor(trained_market.norm_mean)) / torch.as_tensor(trained_market.norm_std)).clamp(-10, 10)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_the_position_file_is_drifted_to_the_last_close():
    idx = pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC")
    bars = pd.DataFrame({"close": [100.0, 110.0, 99.0]}, index=idx)
    # 0.5 held at 100: after +10% it is 55 / 105; after -10% 49.5 / 99.5
    w = drifted_weight({"weight": 0.5, "as_of": "2024-01-01"}, bars, "x.csv")
    assert w == pytest.approx(49.5 / 99.5)


def test_bad_input_is_refused_in_one_line(trained_agent, tmp_path):
    _, csv, bars, ckpt, _ = trained_agent
    last = bars.index[-1]
    with pytest.raises(DataError, match="incomplete"):
        predict(_cfg(ckpt, csv, now=str(last + pd.Timedelta(hours=12))))
    with pytest.raises(DataError, match="max_stale"):
        predict(_cfg(ckpt, csv, now=str(last + pd.Timedelta(days=30)), max_stale="4D"))
    other = write_bars(tmp_path / "xyz_daily.csv", bars)
    with pytest.raises(DataError, match="ticker 'xyz'"):
        predict(_cfg(ckpt, other))
    assert predict(_cfg(ckpt, other, allow_other_ticker=True))["target_weight"] is not None
    hourly = bars.set_axis(pd.date_range("2024-01-01", periods=len(bars), freq="h", tz="UTC"))
    h = tmp_path / "abc_hourly.csv"
    hourly.to_csv(h, index_label="timestamp")
    with pytest.raises(DataError, match="bar size"):
        predict(_cfg(ckpt, str(h)))
    no_volume = tmp_path / "abc_x.csv"
    bars.drop(columns=["volume"]).to_csv(no_volume, index_label="timestamp")
    with pytest.raises(DataError, match="volume"):
        predict(_cfg(ckpt, str(no_volume)))
    short = write_bars(tmp_path / "abc_daily.csv", bars.iloc[-150:])
    with pytest.raises(DataError, match="at least 200"):
        predict(_cfg(ckpt, short))
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(ConfigError, match="position"):
        predict(_cfg(ckpt, csv, position=str(tmp_path / "p.json")))


@pytest.mark.slow
def test_cli_prints_json(trained_agent):
    _, csv, bars, ckpt, _ = trained_agent
    now = str(bars.index[-1] + pd.Timedelta(days=2)).replace(" ", "T")
    res = subprocess.run([sys.executable, "-m", "src.predict", f"ckpt_path={ckpt}", f"data={csv}", f"now='{now}'",
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert {"target_weight", "current_weight", "trade", "last_bar"} <= set(out)
    res = subprocess.run([sys.executable, "-m", "src.predict", f"ckpt_path={ckpt}", f"data={csv}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "max_stale" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_exported_policy_walks_the_test_split_as_the_checkpoint_does(trained_agent, tmp_path, fmt):
    """The exported file, fed the test split's observations, gives the checkpoint's actions: the whole test
    ledger (positions, costs, equity) is the same to float tolerance."""
    from src.evaluation.walk import run_policies
    from src.export import export

    _, _, _, ckpt, _ = trained_agent
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
    path = export(ckpt, fmt, tmp_path / "export")
    spec = json.loads((tmp_path / "export" / "policy.json").read_text())
    module, _, cfg = load_policy(ckpt)
    market = build(cfg.env)
    assert spec["mean"] == pytest.approx(list(market.norm_mean), rel=1e-12) and spec["window"] == market.window
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path))

        def exported(obs):
            return loaded(obs.market, obs.position)
    else:
        session = ort.InferenceSession(str(path))

        def exported(obs):
            feed = {"market": obs.market.numpy(), "position": obs.position.numpy()}
            return torch.as_tensor(session.run(None, feed)[0])

    want = run_policies(market, "test", module.policy())["agent"]
    got = run_policies(market, "test", exported)["agent"]
    assert len(got) > 20 and got["position"].abs().max() > 0
    for col in ("position", "turnover", "cost", "equity"):
        assert got[col].to_numpy() == pytest.approx(want[col].to_numpy(), abs=1e-5), col


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["ensemble=three"], ["population=3"]])
def test_members_each_give_their_weight(trained_agent, tmp_path, extra):
    """An ensemble's and a population's members each report their own weight (the spread is theirs)."""
    from src.train import main as train
    from tests.conftest import TINY, compose_cfg

    _, csv, _, _, _ = trained_agent
    run = tmp_path / "run"
    run.mkdir()
    small = [o for o in TINY if not o.startswith(("env", "trainer.max_steps"))] + ["env.window=8"]
    train(compose_cfg([*small, "env=csv", f"env.path={csv}", "env.episode_length=32", "trainer.max_steps=2", *extra],
                      run))  # fmt: skip
    out = predict(_cfg(str(run / "checkpoints" / "best.ckpt"), csv, now="2100-01-01"))
    assert len(out["members"]) == 3 and out["member_spread"] == pytest.approx(float(torch.tensor(out["members"]).std(
        unbiased=False)), rel=1e-5)  # fmt: skip
    assert len(set(out["members"])) == 3  # independent members disagree


def test_an_older_checkpoint_gets_its_statistics_from_its_unchanged_file(trained_agent, tmp_path):
    """A checkpoint saved before the statistics were: rebuilt from its data file when that is unchanged (the same
    target), refused when the file changed."""
    _, csv, _, ckpt, more = trained_agent
    saved = torch.load(ckpt, weights_only=False)
    del saved["tradelab"]["norm"]
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    now = "2100-01-01"
    assert predict(_cfg(str(old), csv, now=now))["target_weight"] == predict(_cfg(ckpt, csv, now=now))["target_weight"]
    changed = tmp_path / "abc_daily.csv"
    write_bars(changed, more)
    saved["hyper_parameters"]["cfg"]["env"]["path"] = str(changed)
    torch.save(saved, old)
    with pytest.raises(ConfigError, match="data changed"):
        predict(_cfg(str(old), str(changed), now=now))
