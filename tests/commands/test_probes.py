"""Bad input to the commands, probed as a user would give it: each is refused in one line with a non-zero exit,
before anything is loaded or written, and leaves the file system as it was (issue 34, first cases; the table grows
with each command's validation layer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.evaluate import evaluate
from src.export import run as export
from src.paper import run as paper
from src.predict import run as predict
from src.suite import main as suite
from src.train import train
from tests.conftest import ROOT, TINY, compose_cfg


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


def _refused(capsys, call) -> str:
    """The one line a refused command prints; the exit status is non-zero."""
    with pytest.raises(SystemExit) as e:
        call()
    code, err = e.value.code, capsys.readouterr().err.strip()
    message = err or str(code)  # argparse-style commands exit with their message
    assert code not in (0, None) and len(message.splitlines()) == 1 and "Traceback" not in message, message
    return message


def _predict_cfg(ckpt, data, **kw):
    base = {"ckpt_path": ckpt, "data": data, "position": None, "now": None, "max_stale": None,
            "allow_other_ticker": False, "json": False}  # fmt: skip
    return OmegaConf.create({**base, **kw})


PREDICT = [  # (what is given, what the line must say)
    ({"ckpt_path": "{tmp}/nosuch.ckpt"}, "ckpt_path: {tmp}/nosuch.ckpt does not exist"),
    ({"ckpt_path": "{tmp}"}, "ckpt_path: {tmp} is not a file"),
    ({"data": "{tmp}/nosuch.csv"}, "data: {tmp}/nosuch.csv does not exist"),
    ({"now": "garbage"}, "now must be a date or timestamp"),
    ({"max_stale": "abc"}, "max_stale must be a duration such as 4D or 12h"),
    ({"max_stale": "-4D"}, "max_stale must be a duration such as 4D or 12h"),
    ({"position": "{tmp}/nosuch.json"}, "position: {tmp}/nosuch.json does not exist"),
    ({"position": "{tmp}/garbage.json"}, "is not JSON"),
    ({"position": "{tmp}/nan.json"}, "position: the weight must be a finite number"),
    ({"position": "{tmp}/words.json"}, 'position: expected {{"weight": <a finite number>'),
    ({"position": "{tmp}/no_as_of.json"}, 'position: expected {{"weight": <a finite number>'),
]


@pytest.mark.parametrize(("given", "says"), PREDICT)
def test_predict_refuses(trained_agent, tmp_path, capsys, given, says):
    _, csv, bars, ckpt, _ = trained_agent
    (tmp_path / "garbage.json").write_text("{weight: ")
    (tmp_path / "nan.json").write_text(json.dumps({"weight": float("nan"), "as_of": str(bars.index[-1].date())}))
    (tmp_path / "words.json").write_text(json.dumps({"weight": "half", "as_of": str(bars.index[-1].date())}))
    (tmp_path / "no_as_of.json").write_text(json.dumps({"weight": 0.5}))
    args = {k: v.format(tmp=tmp_path) for k, v in given.items()}
    before = _tree(tmp_path)
    cfg = _predict_cfg(ckpt, csv, now="2100-01-01")
    cfg.merge_with(args)
    line = _refused(capsys, lambda: predict(cfg))
    assert says.format(tmp=tmp_path) in line
    assert _tree(tmp_path) == before


def _paper_cfg(account, **kw):
    base = {"account": str(account), "ckpt_path": None, "data": None, "from": None, "now": "2100-01-01",
            "max_stale": None, "command": "step", "allow_other_ticker": False}  # fmt: skip
    return OmegaConf.create({**base, **kw})


PAPER = [
    ({"command": "report"}, "account: {tmp}/acct.db does not exist; open one with ckpt_path=, data= and from="),
    ({}, "account: {tmp}/acct.db does not exist; open one with ckpt_path=, data= and from="),
    ({"ckpt_path": "{ckpt}", "data": "{csv}"}, "opening one needs ckpt_path=, data= and from="),
    ({"ckpt_path": "{tmp}/nosuch.ckpt", "data": "{csv}", "from": "2020-01-01"}, "ckpt_path:"),
    ({"ckpt_path": "{ckpt}", "data": "{csv}", "from": "1900-01-01"}, "from 1900-01-01 is not a bar of the file"),
]


@pytest.mark.parametrize(("given", "says"), PAPER)
def test_paper_refuses_and_leaves_no_account_behind(trained_agent, tmp_path, capsys, given, says):
    _, csv, _, ckpt, _ = trained_agent
    fill = {"tmp": tmp_path, "ckpt": ckpt, "csv": csv}
    args = {k: v.format(**fill) for k, v in given.items()}
    before = _tree(tmp_path)
    line = _refused(capsys, lambda: paper(_paper_cfg(tmp_path / "acct.db", **args)))
    assert says.format(**fill) in line
    assert _tree(tmp_path) == before  # no empty account file, no journal


SUITE = [
    (["--markets", "momentum,nosuch"], "suite: --markets: 'nosuch' is not an env option (conf/env/nosuch.yaml)"),
    (["--markets", "nosuch"], "suite: --markets: 'nosuch' is not an env option"),
    (["--markets", ","], "suite: --markets names no market"),
    (["--markets", "momentum", "--population", "0"], "suite: --population must be >= 1, got 0"),
    (["--markets", "momentum", "--parallel", "0"], "suite: --parallel must be >= 1, got 0"),
]


@pytest.mark.parametrize(("argv", "says"), SUITE)
def test_suite_refuses_before_anything_trains(tmp_path, capsys, argv, says):
    out = tmp_path / "suite"
    line = _refused(capsys, lambda: suite([*argv, "--out", str(out)]))
    assert says in line
    assert not out.exists() and os.listdir(tmp_path) == []


def test_a_suite_of_one_member_is_one_separate_run(tmp_path):
    tiny = [o for o in TINY if not o.startswith("env=")]
    out = tmp_path / "suite"
    suite(["--markets", "momentum", "--population", "1", "--out", str(out), *tiny])
    (row,) = json.loads((out / "suite.json").read_text())
    assert row["market"] == "momentum" and row["members"] == 1
    assert (out / "candidate" / "momentum" / "seed_0" / "metrics.json").exists()


MANDATORY = [("predict", predict, "ckpt_path"), ("paper", paper, "account"), ("export", export, "ckpt_path"),
             ("evaluate", evaluate, "ckpt_path")]  # fmt: skip


@pytest.mark.parametrize(("name", "command", "key"), MANDATORY, ids=[m[0] for m in MANDATORY])
def test_a_mandatory_argument_left_out_is_named(tmp_path, capsys, name, command, key):
    cfg = compose_cfg([], tmp_path / "out", config_name=name)
    before = _tree(tmp_path)
    line = _refused(capsys, lambda: command(cfg))
    assert line == f"error: {key} is mandatory here and has no value (???); give {key}=..."
    assert _tree(tmp_path) == before


def test_train_names_a_mandatory_env_key(tmp_path, capsys):
    tiny = [o for o in TINY if not o.startswith("env")]
    line = _refused(capsys, lambda: train(compose_cfg([*tiny, "env=csv"], tmp_path / "run")))
    assert line == "error: env.path is mandatory here and has no value (???); give env.path=..."
    assert not (tmp_path / "run").exists()


def test_a_refused_evaluation_leaves_no_output_directory(tmp_path):
    out = tmp_path / "eval"
    res = subprocess.run([sys.executable, "-m", "src.evaluate", f"ckpt_path={tmp_path}/nosuch.ckpt",
                          f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip() == f"error: ckpt_path: {tmp_path}/nosuch.ckpt does not exist"
    assert not out.exists()  # Hydra made it with .hydra/ and evaluate.log; the refusal removed them


def test_export_refuses_a_file_or_another_checkpoints_folder_and_lists_every_format(trained_agent, tmp_path, capsys):
    _, _, _, ckpt, _ = trained_agent
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    before = _tree(tmp_path)
    cfg = OmegaConf.create({"ckpt_path": ckpt, "format": "torchscript", "out": str(taken)})
    assert _refused(capsys, lambda: export(cfg)) == f"error: out: {taken} is a file; give a folder for the policy " \
        "file and its policy.json"  # fmt: skip
    assert _tree(tmp_path) == before
    out = tmp_path / "export"
    for fmt in ("torchscript", "onnx"):  # two formats into one folder: policy.json describes both
        export(OmegaConf.create({"ckpt_path": ckpt, "format": fmt, "out": str(out)}))
    capsys.readouterr()
    spec = json.loads((out / "policy.json").read_text())
    assert spec["policies"] == {"torchscript": "policy.pt", "onnx": "policy.onnx"}
    assert all((out / name).is_file() for name in spec["policies"].values())
    saved = torch.load(ckpt, weights_only=False)
    for v in saved["state_dict"].values():
        v.add_(0.01)  # another checkpoint: other weights
    other = str(tmp_path / "other.ckpt")
    torch.save(saved, other)
    before = _tree(tmp_path)
    line = _refused(capsys, lambda: export(OmegaConf.create({"ckpt_path": other, "format": "onnx", "out": str(out)})))
    assert line.startswith(f"error: out: {out} holds the export of another checkpoint")
    assert _tree(tmp_path) == before
    legacy = tmp_path / "legacy"  # policy.json as exports wrote it before it recorded the checkpoint's hash
    legacy.mkdir()
    (legacy / "policy.json").write_text(
        json.dumps({"policy": "policy.pt", "format": "torchscript", "checkpoint": ckpt})
    )
    before = _tree(tmp_path)
    cfg = OmegaConf.create({"ckpt_path": ckpt, "format": "onnx", "out": str(legacy)})
    assert "does not record which checkpoint it came from" in _refused(capsys, lambda: export(cfg))
    assert _tree(tmp_path) == before
