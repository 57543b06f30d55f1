"""Interrupted runs resume exactly: in-process kills and real signals to the CLI, then `resume=`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from src.core.checkpoint import load_checkpoint
from src.train import train
from tests.conftest import ROOT, TINY, compose_cfg
from tests.helpers import LONGER, Killed, run_outcome, run_tiny


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    _, run = run_tiny(tmp_path_factory.mktemp("full"), "run")
    return run_outcome(run)


# ---- interrupted runs (part 3) ----


@pytest.mark.parametrize(("sig", "at"), [("INT", 3), ("TERM", 4), ("KILL", 3), ("KILL", 5)])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, sig, at):
    brk = ["+callbacks.brk._target_=tests.helpers.BreakAt", f"+callbacks.brk.at={at}", f"+callbacks.brk.signal={sig}"]
    if sig == "KILL":
        with pytest.raises(Killed):
            run_tiny(tmp_path, "run", *brk)
    else:
        with pytest.raises(SystemExit) as e:
            run_tiny(tmp_path, "run", *brk)
        assert e.value.code == 128 + getattr(signal, f"SIG{sig}")
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists()
    step = load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    # INT/TERM save after the iteration they arrive in; a kill loses the iterations since the last validation
    assert step == (4 * at if sig != "KILL" else 4 * (at - at % 2))
    run_tiny(tmp_path, "run", resume=run)
    assert run_outcome(run) == uninterrupted
    info = json.loads((run / "run_info.json").read_text())
    assert info["gradient_steps"] == 24 and len(info["resumed"]) == 1


def test_resume_refuses_a_conflicting_override_and_a_finished_run(tmp_path, capsys):
    with pytest.raises(Killed):
        run_tiny(
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
    assert run_outcome(run) == run_outcome(full)
    assert (run / ".hydra" / "overrides.yaml").read_text() == (full / ".hydra" / "overrides.yaml").read_text().replace(
        str(full), str(run)
    )


# ---- numerical faults (part 4) ----
