"""End to end: every config option composes, training runs in-process and from the CLI,
outputs exist and parse, a seed reproduces its metrics, bad input exits with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from src.core.errors import ConfigError
from src.core.utils import build
from src.train import train
from tests.conftest import CONF, ROOT, TINY, compose_cfg, write_csv

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF.iterdir() if g.is_dir()}
OPTIONS = [(g, o) for g, opts in GROUPS.items() for o in opts if not (g in ("env", "callbacks") and o == "base")]
OUTPUTS = (
    "config.yaml",
    "run_info.json",
    "metrics.json",
    "report.md",
    "trades_val.csv",
    "trades_test.csv",
    "equity.png",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
)


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_of_every_group_composes_and_builds(tmp_path, group, option):
    extra = [f"{group}={option}"] + (["env.path=data/tsla_daily.csv"] if (group, option) == ("env", "csv") else [])
    cfg = compose_cfg(extra, tmp_path)
    if group == "env":
        built = instantiate(cfg.env)
        built = getattr(built, "universe", built)  # a portfolio: its assets' markets
        for market in getattr(built, "markets", [built]):  # a universe: every ticker
            assert market.num_features == 10 and market.costs.rate > 0  # every env states its own costs
    elif group == "model":
        instantiate(cfg.model, num_features=10, window=30)
    elif group == "optimizer":
        from src.models import mlp_actor_critic

        opt = instantiate(cfg.optimizer)(mlp_actor_critic(num_features=10, window=4))
        assert sum(len(g["params"]) for g in opt.param_groups) > 0


def _check_outputs(run: Path) -> dict:
    for name in OUTPUTS:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(metrics[split]) == {"agent", "buy_and_hold", "flat"}
        ledger = pd.read_csv(run / f"trades_{split}.csv", index_col="timestamp", parse_dates=True)
        assert {"price", "position", "turnover", "cost", "gross_return", "net_return", "equity"} <= set(ledger)
        # the ledger reproduces the reported figures
        assert ledger["equity"].iloc[-1] == pytest.approx(metrics[split]["agent"]["final_equity"], rel=1e-5)
        assert len(ledger) == metrics[split]["agent"]["bars"]
    assert "buy and hold" in (run / "report.md").read_text()
    v = metrics["verdict"]  # the honest verdict: computed from the same ledgers as the table
    assert v["test"]["sharpe"] == pytest.approx(metrics["test"]["agent"]["sharpe"])
    assert v["test"]["buy_and_hold_sharpe"] == pytest.approx(metrics["test"]["buy_and_hold"]["sharpe"])
    assert v["test"]["sharpe_ci_low"] <= v["test"]["sharpe_ci_high"] and 0 <= v["test"]["psr_vs_zero"] <= 1
    assert v["sentence"] in (run / "report.md").read_text() and "## Verdict" in (run / "report.md").read_text()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    history = pd.read_csv(run / "val_history.csv")
    assert history.env_steps.iloc[-1] == json.loads((run / "run_info.json").read_text())["env_steps"]
    return metrics


def test_train_in_process_writes_every_output(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    val_sharpe = train(cfg)
    metrics = _check_outputs(tmp_path / "run")
    assert val_sharpe == pytest.approx(metrics["val"]["agent"]["sharpe"])
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["env_steps"] == 2 * 8 * 32 and info["gradient_steps"] == 8
    assert info["data"]["sha256"] and info["parameters"] > 0


def test_same_seed_gives_identical_metrics(tiny_cfg, tmp_path):
    train(tiny_cfg("seed=5", run_dir=tmp_path / "a"))
    train(tiny_cfg("seed=5", run_dir=tmp_path / "b"))
    train(tiny_cfg("seed=6", run_dir=tmp_path / "c"))
    a, b, c = ((tmp_path / d / "metrics.json").read_text() for d in "abc")
    assert a == b
    assert a != c


def test_a_finished_run_is_never_overwritten(tiny_cfg, tmp_path):
    train(tiny_cfg())
    before = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(SystemExit):
        train(tiny_cfg())
    assert (tmp_path / "run" / "metrics.json").read_text() == before


def test_bad_config_is_refused_before_training(tiny_cfg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train(tiny_cfg("algo.num_minibatches=3"))
    assert e.value.code == 2
    assert "algo.num_minibatches" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="env.window"):
        build(tiny_cfg("env.window=0").env)


def test_the_verdict_counts_every_validation_check(tiny_cfg, tmp_path):
    """Issue 18: the best checkpoint is not the last; the report says it was selected from every check, and
    the deflated Sharpe ratio is the one recomputed by hand from val_history.csv and trades_val.csv."""
    from src.evaluation.stats import expected_max, probabilistic_sharpe_ratio

    fix = ["+callbacks.fix._target_=tests.helpers.FixPolicy", "+callbacks.fix.positions=[0.95,-0.95,0.0,0.0,0.0]"]
    train(tiny_cfg("trainer.max_steps=20", *fix))  # 5 iterations, each validated
    run = tmp_path / "run"
    hist = pd.read_csv(run / "val_history.csv")
    assert len(hist) == 5
    best = int(hist.sharpe.to_numpy().argmax())
    assert best < 4  # long or short beats flat (and flat ties keep the earlier check): not the last check
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["agent"]["sharpe"] == pytest.approx(hist.sharpe[best], abs=1e-6)
    # by hand: N = 5 checks, V their variance, the PSR of the selected checkpoint's validation returns
    s = hist.sharpe.to_numpy()
    bench = s.std(ddof=1) * expected_max(5)
    led = pd.read_csv(run / "trades_val.csv")
    excess = led.net_return.to_numpy() - (led.risk_free.to_numpy() if "risk_free" in led else 0.0)
    dsr = probabilistic_sharpe_ratio(excess, bench, 252)
    v = metrics["verdict"]["val"]
    assert v["selected_from"] == 5 and v["expected_max_sharpe"] == pytest.approx(bench, rel=1e-6)
    assert v["deflated_sharpe_ratio"] == pytest.approx(dsr, rel=1e-6)
    report = " ".join((run / "report.md").read_text().split())
    assert "selected on validation from all 5 validation checks" in report
    assert f"is {dsr:.3f}" in report
    assert np.isfinite(dsr)


def test_in_sample_is_decided_by_the_bars_not_the_name():
    from src.data import load_market
    from src.evaluate import seen_in_training

    m = load_market("data/tsla_daily.csv")
    trained = m.describe()
    assert seen_in_training(trained, m, "val") and seen_in_training(trained, m, "train")
    assert not seen_in_training(trained, m, "test")
    # the same file split differently: its "test" split reaches back into the checkpoint's validation bars
    other = load_market("data/tsla_daily.csv", split={"train": 0.5, "val": 0.2})
    assert seen_in_training(trained, other, "test")
    assert not seen_in_training({**trained, "sha256": "0"}, other, "test")  # other data: never seen


def test_evaluate_refuses_a_checkpoint_whose_data_changed(tiny_cfg, tmp_path):
    import torch

    from src.app.restore import load_agent

    train(tiny_cfg())
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert load_agent(str(best)).market.data_hash  # the untouched checkpoint loads
    ckpt = torch.load(best, weights_only=False)
    ckpt["tradelab"]["market"]["sha256"] = "f" * 64  # as if the CSV had changed since training
    torch.save(ckpt, best)
    with pytest.raises(ConfigError, match=r"ckpt_path: the checkpoint was trained on data with SHA-256 ffffffffffff"):
        load_agent(str(best))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-0.1", "optimizer.lr must be > 0, got -0.1"),
        ("env.costs.commission_bps=abc", "env.costs.commission_bps must be a finite number, got 'abc'"),
        ("trainer.max_steps=-5", "trainer.max_steps must be >= 1, got -5"),
        ("env.window=abc", "env.window must be an integer, got 'abc'"),
        ("optimizer=soap", None),  # a valid choice: only the next override is wrong
    ],
)
def test_bad_values_stop_the_run_before_anything_is_written(tiny_cfg, tmp_path, capsys, monkeypatch, override, message):
    import src.app.run

    written = []
    monkeypatch.setattr(src.app.run, "atomic_write", lambda path, data: written.append(path))
    extra = [override] if message else [override, "optimizer.betas=[0.9,1.2]"]
    message = message or "optimizer.betas[1] must be >= 0 and < 1, got 1.2"
    with pytest.raises(SystemExit) as e:
        train(tiny_cfg(*extra))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip() == f"error: {message}"  # one line, naming the key
    assert written == []  # refused before config.yaml or run_info.json was written, not cleaned up after
    assert not (tmp_path / "run").exists()


def test_a_failed_run_removes_only_what_it_wrote(tiny_cfg, tmp_path, capsys):
    keep = tmp_path / "run" / "notes.txt"  # the user's own file in a directory they named
    keep.parent.mkdir()
    keep.write_text("mine")
    with pytest.raises(SystemExit):
        train(tiny_cfg("optimizer.lr=-0.1", run_dir=tmp_path / "run"))
    assert keep.read_text() == "mine" and sorted(p.name for p in keep.parent.iterdir()) == ["notes.txt"]
    assert "optimizer.lr" in capsys.readouterr().err


def test_buy_and_hold_stays_fully_long_and_the_report_states_the_assumptions(tiny_cfg, tmp_path):
    train(tiny_cfg("env.position_limits=[-0.5,0.5]"))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert metrics[split]["buy_and_hold"]["exposure"] == pytest.approx(1.0)  # 100% long, whatever the limits
        assert metrics[split]["max_long"]["exposure"] == pytest.approx(0.5, abs=0.01)  # labelled separately
        assert metrics[split]["agent"]["exposure"] <= 0.5 + 0.02  # the agent's own limit (drift within the band)
    report = (run / "report.md").read_text()
    assert "max long within limits" in report and "Buy-and-hold is 100% long the asset throughout" in report
    assumptions = report[report.index("## Assumptions") :]
    for text in ("borrow fee of 30 bp a year", "pays 600 bp a year", "earns 0 bp a year", "dividends: none",
                 "position limits [-0.5, 0.5]", "fills at the next bar's open", "ACT/365"):  # fmt: skip
        assert text in assumptions, text
    ledger = pd.read_csv(run / "trades_test.csv")
    assert {"dividend", "financing", "risk_free", "buy_and_hold_dividend"} <= set(ledger)
    net = ledger.gross_return + ledger.dividend + ledger.financing - ledger.cost
    assert np.allclose(net, ledger.net_return, atol=1e-7)


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_cli_train_then_evaluate(tmp_path):
    run = tmp_path / "run"
    res = _cli("src.train", *TINY, f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = _check_outputs(run)
    assert "test buy and hold" in res.stdout
    ev = tmp_path / "eval"
    res = _cli("src.evaluate", f"ckpt_path={run}/checkpoints/best.ckpt", "split=test", f"hydra.run.dir={ev}")
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.loads((ev / "metrics.json").read_text())
    assert again["test"]["agent"] == pytest.approx(metrics["test"]["agent"])  # same agent, same split, same numbers
    other = tmp_path / "eval_val"
    res = _cli(
        "src.evaluate",
        f"ckpt_path={run}/checkpoints/best.ckpt",
        "split=val",
        "env=synthetic",
        "env.seed=9",
        "env.n_bars=400",
        f"hydra.run.dir={other}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((other / "metrics.json").read_text())["val"]["agent"]["bars"] > 0
    assert "IN SAMPLE" not in (other / "report.md").read_text()  # another market's bars: never seen
    own = tmp_path / "eval_own_val"
    res = _cli("src.evaluate", f"ckpt_path={run}/checkpoints/best.ckpt", "split=val", f"hydra.run.dir={own}")
    assert res.returncode == 0, res.stderr[-3000:]
    v = json.loads((own / "metrics.json").read_text())["verdict"]
    assert v["in_sample"] and "IN SAMPLE: the checkpoint was selected on these bars" in v["sentence"]


@pytest.mark.slow
def test_cli_malformed_csv_exits_with_one_line(tmp_path, csv_text):
    lines = csv_text.splitlines()
    lines[9] = lines[8].split(",")[0] + ",1,2,0.5,1.5,100"  # line 10 repeats line 9's timestamp
    bad = write_csv(tmp_path / "dup.csv", "\n".join(lines) + "\n")
    run = tmp_path / "run"
    res = _cli("src.train", "env=csv", f"env.path={bad}", f"hydra.run.dir={run}", timeout=120)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in res.stderr
    assert err[0] == f"error: {bad}: line 10: duplicate timestamp {lines[8].split(',')[0]} (first on line 9)"
    assert not run.exists()


@pytest.mark.slow
def test_cli_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    res = _cli("src.train", "-m", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert [p.name for p in runs] == ["0_synthetic_s0", "1_synthetic_s1"]
    res = subprocess.run(
        [sys.executable, "experiments/compare.py", str(sweep), "--out", str(tmp_path), "--command", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| synthetic | adamw | 2 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "learning_curves.png").stat().st_size > 0


def test_target_kl_stops_the_epochs_early(tiny_cfg, tmp_path):
    """With a tiny target KL each iteration stops after one epoch, so the same gradient budget buys more env steps."""
    train(tiny_cfg("algo.target_kl=1e-12", run_dir=tmp_path / "kl"))
    info = json.loads((tmp_path / "kl" / "run_info.json").read_text())
    assert info["gradient_steps"] == 8 and info["env_steps"] == 4 * 8 * 32  # 2 steps per iteration, not 4


@pytest.fixture(scope="module")
def baseline_metrics(tmp_path_factory):
    run = tmp_path_factory.mktemp("base")
    train(compose_cfg(TINY, run))
    return (run / "metrics.json").read_text()


@pytest.mark.parametrize(
    "flag", ["algo.norm_adv=false", "algo.reward_scale=1", "algo.ent_coef=0.5", "env.fill=close", "optimizer=sgd"]
)
def test_each_flag_changes_the_outcome(baseline_metrics, tmp_path, flag):
    run = tmp_path / "run"
    run.mkdir()
    train(compose_cfg([*TINY, flag], run))
    assert (run / "metrics.json").read_text() != baseline_metrics


def test_value_clipping_changes_the_outcome_when_it_binds(tmp_path):
    """A small value clip binds, and switching it off (``algo.vf_clip=null``) then changes the run."""
    out = []
    for flag in ("0.001", "null"):
        run = tmp_path / flag
        run.mkdir()
        train(compose_cfg([*TINY, f"algo.vf_clip={flag}"], run))
        out.append((run / "metrics.json").read_text())
    assert out[0] != out[1]


def test_callbacks_none_still_selects_on_validation(tiny_cfg, tmp_path):
    train(tiny_cfg("callbacks=none"))
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["best_checkpoint"].endswith("best.ckpt")
