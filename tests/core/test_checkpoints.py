"""Checkpoints are atomic and safe: a killed or failed save keeps the previous file, and tampered, foreign or
truncated files are refused in one line."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.core.checkpoint import atomic_torch_save, load_checkpoint
from src.core.errors import ConfigError
from tests.conftest import ROOT, compose_cfg
from tests.helpers import run_tiny


def test_a_kill_while_saving_never_leaves_a_truncated_checkpoint(tmp_path):
    """A child process rewrites a 40 MB checkpoint in a loop and is SIGKILLed at a random moment."""
    path = tmp_path / "last.ckpt"
    code = (
        "import sys, torch\n"
        "from src.core.checkpoint import atomic_torch_save\n"
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

    _, run = run_tiny(tmp_path, "run")
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
    _, run = run_tiny(tmp_path, "run", "optimizer=shampoo", "trainer.max_steps=8")
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["optimizer_states"]


# ---- leakage guards (part 5) ----
