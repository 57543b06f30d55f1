"""A self-contained policy file: ``python -m src.export ckpt_path=<run>/checkpoints/best.ckpt format=onnx``.

Writes ``policy.pt`` (TorchScript: runs with torch alone) or ``policy.onnx`` (ONNX: runs with onnxruntime, no
torch; ``pip install -e ".[export]"``) and ``policy.json`` beside it, into ``out`` (default ``<run>/export``).
The policy is the deterministic one that evaluation uses: inputs ``market`` (B, window, F), the last ``window``
feature rows normalised with the training statistics in ``policy.json``, and ``position`` (B, 1), the current
weight; output (B,) the target weight. ``policy.json`` has what a caller needs to build the inputs: the feature
names (computed as :func:`src.data.features.compute_features` does), their training mean and std, the clip, the
window, the bar size, the position limits, the no-trade band and the data file's SHA-256. One folder holds one
checkpoint's exports: ``policies`` in ``policy.json`` lists each format written there (``policy``/``format``: the
last one), and a folder holding another checkpoint's export is refused.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from src.app.restore import load_policy
from src.core.checks import existing_file, mandatory
from src.core.errors import ConfigError
from src.core.files import atomic_write
from src.core.utils import one_line_errors
from src.data.loader import file_sha256
from src.data.market import NORM_CLIP
from src.models.actor_critic import ActorCritic

FORMATS = ("torchscript", "onnx")


class DeterministicPolicy(nn.Module):
    """The Beta policy's mean as a plain function of tensors: ``(market, position) -> target weight``."""

    def __init__(self, model: ActorCritic) -> None:
        super().__init__()
        self.model = model
        self.low, self.width = model.action_range[0], model.action_range[1] - model.action_range[0]

    def forward(self, market: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        ab, _ = self.model.heads(market, position)
        return self.width * ab[:, 0] / (ab[:, 0] + ab[:, 1]) + self.low


def check_out(out: Path, ckpt_sha256: str) -> dict:
    """Refuse an ``out`` that is a file, or a folder holding another checkpoint's export; returns the folder's
    ``policy.json`` so far (empty for a new folder)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file; give a folder for the policy file and its policy.json")
    spec = out / "policy.json"
    if not spec.is_file():
        return {}
    try:
        old = json.loads(spec.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"out: {spec} is not a policy.json this command wrote; choose another out=") from None
    if "checkpoint_sha256" not in old:  # an export from before policy.json recorded its checkpoint's hash
        raise ConfigError(f"out: {out} holds an export that does not record which checkpoint it came from; remove "
                          "it or choose another out=")  # fmt: skip
    if old.get("checkpoint_sha256") != ckpt_sha256:
        raise ConfigError(f"out: {out} holds the export of another checkpoint ({old.get('checkpoint')}); "
                          "choose another out=")  # fmt: skip
    return old


def export(ckpt_path: str, fmt: str, out: Path | None = None) -> Path:
    """Write the policy file and the folder's ``policy.json``, which lists every format exported there from this
    checkpoint; returns the policy file's path."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out) if out else Path(ckpt_path).resolve().parent.parent / "export"
    ckpt_sha256 = file_sha256(existing_file(ckpt_path, "ckpt_path"))
    before = check_out(out, ckpt_sha256)  # before the checkpoint is loaded or anything is written
    module, norm, cfg = load_policy(ckpt_path, "src.export")
    if not isinstance(module.model, ActorCritic) or module.model.goal_dim:
        raise ConfigError(f"ckpt_path: {ckpt_path} holds an ensemble, a population or a goal-conditioned agent; "
                          "src.export takes a single agent")  # fmt: skip
    try:
        return _write(out, fmt, module, norm, cfg, ckpt_path, ckpt_sha256, before)
    except OSError as e:  # a full disk, a read-only mount: the file system's word, in one line
        raise ConfigError(f"out: cannot write into {out} ({e.strerror or e})") from None


def _write(out: Path, fmt: str, module, norm: dict, cfg, ckpt_path: str, ckpt_sha256: str, before: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    policy = DeterministicPolicy(module.model).eval()
    w, f = int(norm["window"]), len(norm["mean"])
    example = (torch.zeros(2, w, f), torch.zeros(2, 1))
    if fmt == "torchscript":
        path = out / "policy.pt"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; still the file
            scripted = torch.jit.trace(policy, example)  # format a C++ or Python caller loads without our code
        tmp = out / "policy.pt.tmp"
        torch.jit.save(scripted, str(tmp))
        tmp.replace(path)
    else:
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ConfigError('format=onnx needs the export extra: pip install -e ".[export]"') from None
        path = out / "policy.onnx"
        tmp = out / "policy.tmp.onnx"
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(policy, example, str(tmp), input_names=["market", "position"], output_names=["target"],
                          dynamic_shapes={"market": {0: batch}, "position": {0: batch}}, dynamo=True,
                          external_data=False, verbose=False)  # fmt: skip
        tmp.replace(path)
    spec = {
        "policies": {**before.get("policies", {}), fmt: path.name},  # every file of this folder
        "policy": path.name, "format": fmt, "checkpoint": str(ckpt_path), "checkpoint_sha256": ckpt_sha256,
        "inputs": {"market": [None, w, f], "position": [None, 1]}, "output": "target weight (B,)",
        "features": norm["features"], "mean": norm["mean"], "std": norm["std"], "clip": NORM_CLIP,
        "window": w, "bars_per_year": norm["bars_per_year"], "source": norm.get("source"),
        "sha256": norm.get("sha256"), "position_limits": list(module.market.position_limits),
        "min_trade": float(cfg.env.min_trade), "fill": str(cfg.env.fill),
    }  # fmt: skip
    atomic_write(out / "policy.json", json.dumps(spec, indent=2) + "\n")
    return path


@one_line_errors
def run(cfg: DictConfig) -> Path:
    mandatory(cfg)
    path = export(cfg.ckpt_path, cfg.format, cfg.get("out"))
    print(f"wrote {path} and {path.parent / 'policy.json'}", flush=True)
    return path


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
