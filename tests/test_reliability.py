"""Reliability: interrupted runs resume exactly, numerical faults are caught, checkpoints are atomic and safe,
bad configuration stops before training, and nothing looks ahead (each case is tried for real)."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import src.lit_module
from src.checkpoint import atomic_torch_save, load_checkpoint
from src.data import build_market
from src.errors import ConfigError
from src.evaluation import model_policy, run_policies
from src.models.actor_critic import mlp_actor_critic
from src.suite import edge_holm
from src.train import train
from tests.conftest import ROOT, TINY, compose_cfg
from tests.helpers import Killed

# 6 PPO iterations of 4 gradient steps; validation (and last.ckpt) every 2 iterations.
LONGER = ["trainer.max_steps=24", "trainer.val_check_interval=2"]


def _run(tmp_path: Path, name: str, *extra: str, resume: Path | None = None):
    run = resume or tmp_path / name
    run.mkdir(parents=True, exist_ok=True)
    overrides = [*TINY, *LONGER, *extra] if resume is None else [f"resume={run}"]
    return train(compose_cfg(overrides, run)), run


def _outcome(run: Path) -> tuple[dict, str]:
    return json.loads((run / "metrics.json").read_text()), (run / "val_history.csv").read_text()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    _, run = _run(tmp_path_factory.mktemp("full"), "run")
    return _outcome(run)


# ---- interrupted runs (part 3) ----


@pytest.mark.parametrize(("sig", "at"), [("INT", 3), ("TERM", 4), ("KILL", 3), ("KILL", 5)])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, sig, at):
    brk = ["+callbacks.brk._target_=tests.helpers.BreakAt", f"+callbacks.brk.at={at}", f"+callbacks.brk.signal={sig}"]
    if sig == "KILL":
        with pytest.raises(Killed):
            _run(tmp_path, "run", *brk)
    else:
        with pytest.raises(SystemExit) as e:
            _run(tmp_path, "run", *brk)
        assert e.value.code == 128 + getattr(signal, f"SIG{sig}")
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists()
    step = load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    # INT/TERM save after the iteration they arrive in; a kill loses the iterations since the last validation
    assert step == (4 * at if sig != "KILL" else 4 * (at - at % 2))
    _run(tmp_path, "run", resume=run)
    assert _outcome(run) == uninterrupted
    info = json.loads((run / "run_info.json").read_text())
    assert info["gradient_steps"] == 24 and len(info["resumed"]) == 1


def test_resume_refuses_a_conflicting_override_and_a_finished_run(tmp_path, capsys):
    with pytest.raises(Killed):
        _run(
            tmp_path,
            "run",
            "+callbacks.brk._target_=tests.helpers.BreakAt",
            "+callbacks.brk.at=3",
            "+callbacks.brk.signal=KILL",
        )
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        train(compose_cfg([f"resume={run}", "optimizer=sgd"], run))
    assert "override 'optimizer=sgd' disagrees with the run's saved config.yaml" in capsys.readouterr().err
    train(compose_cfg([*TINY, *LONGER, f"resume={run}"], run))  # the original command + resume: agrees, continues
    with pytest.raises(SystemExit):
        train(compose_cfg([f"resume={run}"], run))
    assert "that run has finished" in capsys.readouterr().err


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "src.train", *args],
        cwd=ROOT,
        env=env,
        text=True,
        **kw,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


SIGNAL_RUN = [*TINY, "trainer.max_steps=120", "trainer.val_check_interval=2", "~logger"]


@pytest.fixture(scope="module")
def uninterrupted_cli_run(tmp_path_factory):
    """The reference for the signal tests: the same CLI run, never interrupted (trained once for all three)."""
    full = tmp_path_factory.mktemp("signals") / "full"
    assert _cli(*SIGNAL_RUN, f"hydra.run.dir={full}").wait(timeout=300) == 0
    return full


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_cli_real_signal_at_a_random_point_then_resume(tmp_path, sig, uninterrupted_cli_run):
    """A real signal at a random moment of a real run; ``resume=`` then reproduces the uninterrupted metrics."""
    args, full = SIGNAL_RUN, uninterrupted_cli_run
    run = tmp_path / "run"
    proc = _cli(*args, f"hydra.run.dir={run}")
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # somewhere in the middle of training (the run takes several seconds)
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    if (run / "metrics.json").exists():
        pytest.skip("the run finished before the signal arrived")
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + sig, out[-2000:]
        assert f"continue with: python -m src.train resume={run}" in out
    res = _cli(f"resume={run}")
    out = res.communicate(timeout=300)[0]
    assert res.returncode == 0, out[-3000:]
    assert _outcome(run) == _outcome(full)
    assert (run / ".hydra" / "overrides.yaml").read_text() == (full / ".hydra" / "overrides.yaml").read_text().replace(
        str(full), str(run)
    )


# ---- numerical faults (part 4) ----


def _poison(monkeypatch, calls: set[int]):
    """Put a NaN into the rewards of the given rollouts (1-based)."""
    real, n = src.lit_module.collect, [0]

    def collect(model, env, obs, buf, *args):
        out = real(model, env, obs, buf, *args)
        n[0] += 1
        if n[0] in calls:
            buf.rewards[3, 1] = float("nan")
        return out

    monkeypatch.setattr(src.lit_module, "collect", collect)


def test_a_nan_reward_skips_the_update_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {2})
    _run(tmp_path, "run")
    run = tmp_path / "run"
    info = json.loads((run / "run_info.json").read_text())
    assert info["numerical_faults"] == 1
    assert info["gradient_steps"] == 24  # the skipped rollout bought no gradient step: the budget is kept
    assert "numerical fault: non-finite rewards in the rollout; update skipped (1 in a row)" in capsys.readouterr().out


def test_consecutive_faults_stop_the_run_with_a_clear_message(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, set(range(3, 100)))
    with pytest.raises(SystemExit) as e:
        _run(tmp_path, "run", "faults.max_consecutive=2")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "stopping: 2 consecutive numerical faults (faults.max_consecutive=2); last: non-finite rewards" in err
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists() and "consecutive numerical faults" in (run / "FAILED").read_text()
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpt)["state_dict"].values())


def test_a_nan_gradient_is_skipped(tmp_path, monkeypatch, capsys):
    import src.rl.ppo

    real, n = src.rl.ppo.value_loss, [0]

    def value_loss(*args, **kw):
        n[0] += 1
        out = real(*args, **kw)
        return out * float("nan") if n[0] == 6 else out

    monkeypatch.setattr(src.rl.ppo, "value_loss", value_loss)
    _run(tmp_path, "run")
    assert "non-finite loss at gradient step 5" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["numerical_faults"] == 1


def test_a_nan_gradient_is_skipped_in_the_fused_update(tmp_path, monkeypatch, capsys):
    """``compile=true`` computes gradients inside one compiled graph: a non-finite norm from it skips the step too."""
    from src.lit_module import PPOModule

    real_configure = PPOModule.configure_optimizers

    def configure_optimizers(self):  # once per fit, before the first update: wrap the compiled function
        fused, n = self._grads, [0]

        def poisoned(*a):
            n[0] += 1
            loss, terms, grads, norm = fused(*a)
            return loss, terms, grads, norm * float("nan") if n[0] == 6 else norm

        self._grads = poisoned
        return real_configure(self)

    monkeypatch.setattr(PPOModule, "configure_optimizers", configure_optimizers)
    small_mlp = ["model=mlp", "model.hidden=[16,16]", "model.head_hidden=16", "compile=true"]
    (tmp_path / "run").mkdir()
    train(compose_cfg([o for o in TINY if not o.startswith("model.")] + LONGER + small_mlp, tmp_path / "run"))
    assert "non-finite gradients at gradient step 5" in capsys.readouterr().out
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    # the faulted iteration kept its first step and skipped the rest; whole iterations of 4 then pass the budget of 24
    assert info["numerical_faults"] == 1 and info["gradient_steps"] == 1 + 4 + 4 * 5


def test_a_nan_model_is_never_saved(tmp_path, monkeypatch, capsys):
    """Weights that turn non-finite stop the run at once; no checkpoint, best or last, holds them."""
    real = src.lit_module.PPOModule._update

    def update(self, *args):
        out = real(self, *args)
        if self.global_step >= 12:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(src.lit_module.PPOModule, "_update", update)
    with pytest.raises(SystemExit):
        _run(tmp_path, "run")
    assert "stopping: non-finite weights after the update at step 12" in capsys.readouterr().err
    ckpts = list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert ckpts
    for ckpt in ckpts:
        assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpt)["state_dict"].values())


# ---- bad configuration, before any training (part 2) ----


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env.window=0", "env.window must be > 0"),
        ("env.costs.spread_bps=-1", "env.costs.spread_bps must be >= 0"),
        ("env.position_limits=[0.2,1]", "env.position_limits must satisfy"),
        ("algo.num_minibatches=3", "algo.num_minibatches"),
        ("faults.max_consecutive=0", "faults.max_consecutive must be >= 1"),
        ("trainer=gpu", "trainer.accelerator=gpu but no CUDA device is available"),
    ],
)
def test_bad_config_stops_before_training_naming_the_key(tmp_path, capsys, override, message):
    if override == "trainer=gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(SystemExit) as e:
        train(compose_cfg([*TINY, override], run))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not run.exists()  # nothing left that looks like a run


def test_unknown_option_names_are_refused_by_hydra(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="optimizer/adamx"):
        compose_cfg([*TINY, "optimizer=adamx"], tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback on a machine without a GPU")
def test_gpu_request_falls_back_to_cpu_only_when_asked(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    train(compose_cfg([*TINY, "trainer=gpu", "allow_cpu_fallback=true"], run))
    assert "no CUDA device; allow_cpu_fallback=true: training on the CPU" in capsys.readouterr().out
    assert (run / "metrics.json").is_file()


def _bad_files(tmp: Path, good: str) -> dict[str, tuple[Path, str]]:
    """Broken variants of a valid CSV, each with the message it must produce."""
    lines = good.splitlines()
    head, rows = lines[0], lines[1:]

    def write(name: str, text: str | bytes) -> Path:
        p = tmp / f"{name}.csv"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    ts = [r.split(",", 1)[0] for r in rows]
    cases = {
        "empty": ("", "file is empty"),
        "header_only": (head + "\n", "no data rows (header only)"),
        "duplicate": ("\n".join([head, *rows[:9], ts[8] + ",1,2,0.5,1.5,9", *rows[10:]]), "line 11: duplicate"),
        "mixed_tz": (
            "\n".join([head, *rows[:5], ts[5] + "T00:00:00Z," + rows[5].split(",", 1)[1], *rows[6:]]),
            "mixed",
        ),
        "gap": ("\n".join([head, *rows[:50], *rows[70:]]), "line 52: 31 days 00:00:00 gap"),
        "adj_only": (good.replace("close", "Adj Close", 1), "has 'Adj Close' but no close column"),
        "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 50, "not a UTF-8 text file"),
    }
    return {k: (write(k, text), msg) for k, (text, msg) in cases.items()}


@pytest.mark.parametrize("case", ["empty", "header_only", "duplicate", "mixed_tz", "gap", "adj_only", "binary"])
def test_bad_data_through_train_exits_with_one_line_and_no_run_dir(tmp_path, csv_text, capsys, case):
    path, message = _bad_files(tmp_path, csv_text)[case]
    for env in ("csv", "tsla"):  # the generic loader and a shipped config pointed at the same file
        run = tmp_path / f"run_{env}"
        run.mkdir()
        with pytest.raises(SystemExit) as e:
            train(compose_cfg([f"env={env}", f"env.path={path}"], run))
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {path}") and message in err[0], err
        assert not run.exists()


# ---- checkpoints: atomic and safe (parts 3 and 6) ----


def test_a_kill_while_saving_never_leaves_a_truncated_checkpoint(tmp_path):
    """A child process rewrites a 40 MB checkpoint in a loop and is SIGKILLed at a random moment."""
    path = tmp_path / "last.ckpt"
    code = (
        "import sys, torch\n"
        "from src.checkpoint import atomic_torch_save\n"
        "from pathlib import Path\n"
        "p = Path(sys.argv[1]); i = 0\n"
        "while True:\n"
        "    atomic_torch_save({'i': i, 'w': torch.full((10_000_000,), float(i))}, p); i += 1\n"
        "    print(i, flush=True)\n"
    )
    for trial in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip()  # one complete save exists
        time.sleep(random.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["w"].shape == (10_000_000,) and bool((ckpt["w"] == ckpt["i"]).all()), f"trial {trial}"


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("serialisation failed half-way")

    path = tmp_path / "best.ckpt"
    atomic_torch_save({"w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="half-way"):
        atomic_torch_save({"w": torch.zeros(1000), "x": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


class _Payload:
    """What an attacker would put in a checkpoint: unpickling it calls open() and creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_tampered_foreign_and_truncated_checkpoints_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "tradelab": {}, "x": _Payload(marker)}, evil)
    with pytest.raises(
        ConfigError, match=r"evil.ckpt: refused to load: it holds objects outside the checkpoint allow-list"
    ):
        load_checkpoint(evil)
    assert not marker.exists()  # never executed
    with pytest.raises(pickle.UnpicklingError):  # what weights_only=False would have done instead: run it
        torch.load(evil, weights_only=True)

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(ConfigError, match="not a tradelab checkpoint"):
        load_checkpoint(foreign)

    _, run = _run(tmp_path, "run")
    good = run / "checkpoints" / "best.ckpt"
    assert load_checkpoint(good)["tradelab"]["env_steps"] > 0
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConfigError, match="cut.ckpt: unreadable checkpoint"):
        load_checkpoint(cut)


def test_evaluate_refuses_a_tampered_checkpoint_with_one_line(tmp_path, capsys):
    from src.evaluate import evaluate

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "tradelab": {}, "x": _Payload(marker)}, evil)
    out = tmp_path / "eval"
    out.mkdir()
    with pytest.raises(SystemExit) as e:
        evaluate(compose_cfg([f"ckpt_path={evil}"], out, config_name="evaluate"))
    assert e.value.code == 2 and "refused to load" in capsys.readouterr().err and not marker.exists()


def test_shampoo_checkpoint_loads_under_the_allow_list(tmp_path):
    _, run = _run(tmp_path, "run", "optimizer=shampoo", "trainer.max_steps=8")
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["optimizer_states"]


# ---- leakage guards (part 5) ----


def _perturbed_after(bars: pd.DataFrame, t: int, seed: int = 0) -> pd.DataFrame:
    """Every bar after ``t`` rescaled, open and close by different factors (high/low widened to stay valid)."""
    out = bars.copy()
    s_open, s_close = np.exp(np.random.default_rng(seed).normal(0, 0.1, (2, len(bars) - t - 1)))
    col = out.columns.get_loc
    out.iloc[t + 1 :, col("open")] *= s_open
    out.iloc[t + 1 :, col("close")] *= s_close
    out.iloc[t + 1 :, col("high")] *= np.maximum(s_open, s_close)
    out.iloc[t + 1 :, col("low")] *= np.minimum(s_open, s_close)
    out.iloc[t + 1 :, col("volume")] *= 3
    return out


@pytest.mark.parametrize("leak", [False, True])
def test_perturbing_the_future_changes_no_observation_or_action_up_to_t(bars, leak):
    """(a) Bars after t replaced: every feature, observation and chosen action at bars <= t is unchanged.

    With the deliberate leak (the canary) the same check fails: the guard can catch a look-ahead.
    """
    kw = dict(name="x", source="mem", window=10, leak_next_return=leak)
    m = build_market(bars, data_hash="0", **kw)
    t_row = m.splits["test"][0] + 10  # a bar inside the test split; the train statistics stay the same
    m2 = build_market(_perturbed_after(bars, t_row + 35), data_hash="1", **kw)  # +35: the feature warm-up
    torch.manual_seed(0)
    policy = model_policy(mlp_actor_critic(m.num_features, m.window).eval())
    same_features = torch.equal(m.features[: t_row + 1], m2.features[: t_row + 1])
    a, b = (run_policies(x, "test", policy)["agent"] for x in (m, m2))
    first = m.decision_range("test")[0]
    upto = t_row - first + 1  # ledger rows whose decision bar is <= t
    same_actions = np.array_equal(a["position"].to_numpy()[:upto], b["position"].to_numpy()[:upto])
    if leak:
        assert not same_features and not same_actions
    else:
        assert same_features and same_actions
        np.testing.assert_array_equal(m.norm_mean, m2.norm_mean)
        assert not np.array_equal(a["position"].to_numpy()[upto:], b["position"].to_numpy()[upto:])


# A driftless random walk (no signal), no costs: without information the expected P&L is exactly zero.
RANDOM_WALK = [
    "env.drifts=[0.0]",
    "env.vols=[0.01]",
    "env.n_bars=1500",
    "env.costs.commission_bps=0",
    "env.costs.spread_bps=0",
    "env.costs.slippage_bps=0",
    "model=mlp",
    "optimizer.lr=0.003",
    "trainer.max_steps=96",
    "trainer.val_check_interval=4",
    "~logger",
]


def _pooled_t(tmp_path: Path, seeds: range, *extra: str) -> tuple[float, list[float], dict]:
    """t-statistic of the mean per-bar test return pooled over runs, each run's test Sharpe, and the runs as the
    members of a population (what the suite's edge count reads)."""
    rets, sharpes, members = [], [], []
    tiny = [o for o in TINY if not o.startswith("model.") or o.startswith("model.head")]
    for s in seeds:
        run = tmp_path / f"s{s}"
        run.mkdir(parents=True)
        train(compose_cfg([*tiny, *RANDOM_WALK, f"env.seed={100 + s}", f"seed={s}", *extra], run))
        rets.append(pd.read_csv(run / "trades_test.csv")["net_return"].to_numpy())
        members.append(json.loads((run / "metrics.json").read_text()))
        sharpes.append(members[-1]["test"]["agent"]["sharpe"])
    r = np.concatenate(rets)
    return float(r.mean() / r.std(ddof=1) * np.sqrt(len(r))), sharpes, {"members": members}


def test_random_walk_gives_no_significant_test_sharpe_and_a_leak_would(tmp_path):
    """(c) On a driftless random walk the trained agent's pooled test P&L is indistinguishable from zero;
    (d) the same statistic with the next bar's return leaked into the observation is far from zero. The suite's
    null-row check (members with an edge after Holm) reads 0 of 4 on the first and flags both leaky runs."""
    t_null, sharpes, null = _pooled_t(tmp_path / "null", range(4))
    assert abs(t_null) < 3.0, (t_null, sharpes)
    assert edge_holm(null) == 0
    t_leak, leak_sharpes, leak = _pooled_t(tmp_path / "leak", range(2), "+env.leak_next_return=true")
    assert t_leak > 8.0 and min(leak_sharpes) > 5.0, (t_leak, leak_sharpes)
    assert edge_holm(leak) == 2
