"""Numerical faults are caught and skipped, bad configuration and bad data stop a run before training
in one line, and a GPU request on a machine without one falls back only when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import src.training.module
from src.core.checkpoint import load_checkpoint
from src.train import train
from tests.conftest import TINY, compose_cfg
from tests.helpers import LONGER, run_tiny


def _poison(monkeypatch, calls: set[int]):
    """Put a NaN into the rewards of the given rollouts (1-based)."""
    real, n = src.training.module.collect, [0]

    def collect(model, env, obs, buf, *args):
        out = real(model, env, obs, buf, *args)
        n[0] += 1
        if n[0] in calls:
            buf.rewards[3, 1] = float("nan")
        return out

    monkeypatch.setattr(src.training.module, "collect", collect)


def test_a_nan_reward_skips_the_update_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {2})
    run_tiny(tmp_path, "run")
    run = tmp_path / "run"
    info = json.loads((run / "run_info.json").read_text())
    assert info["numerical_faults"] == 1
    assert info["gradient_steps"] == 24  # the skipped rollout bought no gradient step: the budget is kept
    assert "numerical fault: non-finite rewards in the rollout; update skipped (1 in a row)" in capsys.readouterr().out


def test_consecutive_faults_stop_the_run_with_a_clear_message(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, set(range(3, 100)))
    with pytest.raises(SystemExit) as e:
        run_tiny(tmp_path, "run", "faults.max_consecutive=2")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "stopping: 2 consecutive numerical faults (faults.max_consecutive=2); last: non-finite rewards" in err
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists() and "consecutive numerical faults" in (run / "FAILED").read_text()
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpt)["state_dict"].values())


def test_a_resumed_run_that_finishes_clears_its_failure_marker(tmp_path, monkeypatch, capsys):
    """The FAILED marker of a run stopped by faults goes once the same run is resumed to its end."""
    _poison(monkeypatch, set(range(3, 100)))
    with pytest.raises(SystemExit):
        run_tiny(tmp_path, "run", "faults.max_consecutive=2")
    run = tmp_path / "run"
    assert (run / "FAILED").exists() and (run / "checkpoints" / "last.ckpt").exists()
    monkeypatch.undo()
    run_tiny(tmp_path, "run", resume=run)
    assert (run / "metrics.json").exists() and not (run / "FAILED").exists()


def test_a_nan_gradient_is_skipped(tmp_path, monkeypatch, capsys):
    import src.rl.ppo

    real, n = src.rl.ppo.value_loss, [0]

    def value_loss(*args, **kw):
        n[0] += 1
        out = real(*args, **kw)
        return out * float("nan") if n[0] == 6 else out

    monkeypatch.setattr(src.rl.ppo, "value_loss", value_loss)
    run_tiny(tmp_path, "run")
    assert "non-finite loss at gradient step 5" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["numerical_faults"] == 1


def test_a_nan_gradient_is_skipped_in_the_fused_update(tmp_path, monkeypatch, capsys):
    """``compile=true`` computes gradients inside one compiled graph: a non-finite norm from it skips the step too."""
    from src.training.module import PPOModule

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
    real = src.training.module.PPOModule._update

    def update(self, *args):
        out = real(self, *args)
        if self.global_step >= 12:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(src.training.module.PPOModule, "_update", update)
    with pytest.raises(SystemExit):
        run_tiny(tmp_path, "run")
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
