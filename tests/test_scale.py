"""Scale-out on existing engines (issue 8): Lightning DDP with 2 CPU processes, Hydra's joblib launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, TINY


def _train_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    """``trainer=ddp``: 2 gloo processes, each its own episodes; gradients all-reduced, so weights stay equal."""
    run = tmp_path / "run"
    args = [*TINY, "trainer=ddp", "trainer.max_steps=12", "threads=1", "~logger", f"hydra.run.dir={run}"]
    args += ["+callbacks.w._target_=tests.helpers.SaveWeights", f"+callbacks.w.out={tmp_path}"]
    proc = _train_cli(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert not torch.equal(w0.pop("env_t"), w1.pop("env_t"))  # each rank walked its own episodes
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
    info = json.loads((run / "run_info.json").read_text())
    assert info["processes"] == 2
    assert info["gradient_steps"] == 12
    assert info["env_steps"] == 2 * 8 * 32 * 3  # 3 iterations of 8 envs x 32 steps on each of 2 ranks
    assert (run / "metrics.json").is_file() and (run / "report.md").is_file()


@pytest.mark.slow
def test_joblib_launcher_runs_two_trials_in_their_own_processes(tmp_path):
    """``hydra/launcher=local`` (joblib): two seeds of a multirun run in two worker processes, both complete."""
    sweep, pids = tmp_path / "sweep", tmp_path / "pids"
    pids.mkdir()
    args = ["-m", "hydra/launcher=local", "seed=0,1", *TINY, "threads=1", "~logger", f"hydra.sweep.dir={sweep}"]
    args += ["+callbacks.p._target_=tests.helpers.RecordProcess", f"+callbacks.p.out={pids}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "Joblib" in out  # Hydra names the launcher it used
    workers = {int(p.name[3:]) for p in pids.iterdir()}
    assert len(workers) == 2 and proc.pid not in workers
    runs = sorted(sweep.glob("*_s*/metrics.json"))
    assert [r.parent.name for r in runs] == ["0_synthetic_s0", "1_synthetic_s1"]
    assert [json.loads((r.parent / "run_info.json").read_text())["seed"] for r in runs] == [0, 1]
