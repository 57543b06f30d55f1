"""Optimizers as ``_partial_`` factories completed with the model (``conf/optimizer/*.yaml``).

Weight decay goes only to tensors with >= 2 dims (weight matrices and the
positional table); biases and norm gains are not decayed (:func:`param_groups`).
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and undecayed biases / norm gains (nanoGPT's rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def adamw(
    model: nn.Module,
    lr: float = 3e-4,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-5,
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps)


def sgd(
    model: nn.Module, lr: float = 1e-2, weight_decay: float = 0.0, momentum: float = 0.9, nesterov: bool = True
) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov)
