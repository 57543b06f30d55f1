"""Checkpoints: atomic writes, safe loading, and the process RNG states that travel with them.

* **Atomic**: :class:`AtomicCheckpointIO` serialises to a temporary file in
  the target directory, flushes it to disk and renames it over the target,
  so a kill while saving leaves the previous ``best.ckpt``/``last.ckpt``
  intact (a rename is atomic on POSIX file systems).
* **Safe**: :func:`load_checkpoint` uses ``torch.load(weights_only=True)``
  with an explicit allow-list (:data:`SAFE_GLOBALS`: the plain state classes
  of the Shampoo implementation). A checkpoint that would need anything else
  to unpickle (for example one crafted to run code) is refused, never
  executed; so is a file without tradelab's own section, or a truncated one.
* **RNG**: :func:`rng_state` / :func:`set_rng_state` capture and restore the
  Python, NumPy and torch (CPU and CUDA) generators as tensors and plain
  containers, so they load under ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.core.errors import ConfigError

# Classes a tradelab checkpoint may contain besides tensors and plain containers:
# pytorch-optimizer's ScalableShampoo keeps its preconditioner state in these.
SAFE_GLOBALS: list[Any] = []
with contextlib.suppress(ImportError):
    from pytorch_optimizer.optimizer.utils.graft import RMSPropGraft
    from pytorch_optimizer.optimizer.utils.partition import BlockPartitioner, PreConditionerType
    from pytorch_optimizer.optimizer.utils.preconditioner import PreConditioner

    SAFE_GLOBALS += [RMSPropGraft, BlockPartitioner, PreConditionerType, PreConditioner]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes ``temp file -> fsync -> rename``."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` without ever exposing a partly written file there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a tradelab checkpoint safely; see the module docstring.

    Raises:
        ConfigError: missing, truncated, foreign or unsafe checkpoint, naming the file and the problem.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no checkpoint at {p}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{p}: refused to load: it holds objects outside the checkpoint allow-list, so it is not a tradelab "
            f"checkpoint or has been tampered with ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"{p}: unreadable checkpoint (truncated or corrupt: {str(e).strip()[:200]})") from None
    if not isinstance(ckpt, dict) or "tradelab" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(f"{p}: not a tradelab checkpoint (no 'tradelab' and 'state_dict' sections)")
    return ckpt


def rng_state() -> dict:
    """The process-global random generators, as tensors and plain containers."""
    mt, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": mt,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
