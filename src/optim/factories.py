"""Optimizers as ``_partial_`` factories completed with the model (``conf/optimizer/*.yaml``).

Weight decay goes only to tensors with >= 2 dims (weight matrices and the
positional table); biases and norm gains are not decayed (:func:`param_groups`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from src.core.errors import ConfigError

# Multi-tensor (foreach) kernels on every device: on the CPU torch defaults to a loop over parameters,
# which costs a third of a small model's update; the results are bit-identical.
FOREACH = True
# AdamW as one fused kernel per parameter group (CPU and CUDA): a third of foreach's time on a small model.
FUSED_ADAMW = True


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and undecayed biases / norm gains (nanoGPT's rule)."""
    params = [p for p in params if p.requires_grad]
    dim = lambda p: getattr(p, "member_ndim", p.dim())  # noqa: E731  (a population's stacks: a member's ndim)
    return [
        {"params": [p for p in params if dim(p) >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if dim(p) < 2], "weight_decay": 0.0},
    ]


def adamw(
    model: nn.Module,
    lr: float = 3e-4,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-5,
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model.parameters(), weight_decay), lr=lr, betas=tuple(betas), eps=eps, fused=FUSED_ADAMW
    )


def sgd(
    model: nn.Module, lr: float = 1e-2, weight_decay: float = 0.0, momentum: float = 0.9, nesterov: bool = True
) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        param_groups(model.parameters(), weight_decay), lr=lr, momentum=momentum, nesterov=nesterov, foreach=FOREACH
    )


def muon(
    model: nn.Module,
    lr: float = 0.02,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    weight_decay: float = 0.01,
    adjust_lr_fn: str | None = None,
    adamw_lr: float = 3e-4,
    adamw_betas: tuple[float, float] = (0.9, 0.999),
    adamw_weight_decay: float = 0.01,
    eps: float = 1e-5,
) -> torch.optim.Optimizer:
    """``torch.optim.Muon`` on the hidden matrices, AdamW on the rest (:mod:`src.optim.muon`)."""
    from src.optim.muon import MuonAdamW, hidden_matrices

    mats, rest = hidden_matrices(model)
    if not mats:
        raise ConfigError("optimizer=muon needs hidden weight matrices; this model has none (use adamw)")
    stacked = any(hasattr(p, "member_ndim") for p in mats)  # a population: every member's matrix on its own
    if stacked:
        from src.optim.batched_muon import BatchedMuon
    inner = (BatchedMuon if stacked else torch.optim.Muon)(
        mats,
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        ns_steps=ns_steps,
        weight_decay=weight_decay,
        adjust_lr_fn=adjust_lr_fn,
    )
    groups = param_groups(rest, adamw_weight_decay)
    return MuonAdamW(
        inner, torch.optim.AdamW(groups, lr=adamw_lr, betas=tuple(adamw_betas), eps=eps, fused=FUSED_ADAMW)
    )


def shampoo(
    model: nn.Module,
    lr: float = 3e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    start_preconditioning_step: int = 25,
    preconditioning_compute_steps: int = 20,
    block_size: int = 128,
    graft_type: str = "rmsprop",
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """Scalable Shampoo (Anil et al., 2020) from ``pytorch-optimizer``: blocked Kronecker
    preconditioners for matrices, grafted onto ``graft_type`` step sizes; 1-D tensors
    (biases, norm gains) fall back to the grafting optimizer's diagonal update."""
    from pytorch_optimizer import ScalableShampoo
    from pytorch_optimizer.optimizer.utils.graft import LayerWiseGrafting

    graft = {g.name.lower(): g for g in LayerWiseGrafting}[graft_type]  # none, sgd, adagrad, rmsprop, sqrtn
    return ScalableShampoo(
        param_groups(model.parameters(), weight_decay),
        lr=lr,
        betas=tuple(betas),
        start_preconditioning_step=start_preconditioning_step,
        preconditioning_compute_steps=preconditioning_compute_steps,
        block_size=block_size,
        graft_type=graft,
        nesterov=nesterov,
        decoupled_weight_decay=True,
    )


def soap(
    model: nn.Module,
    lr: float = 3e-3,
    betas: tuple[float, float] = (0.95, 0.95),
    weight_decay: float = 0.01,
    precondition_frequency: int = 10,
    max_precondition_dim: int = 10000,
    precondition_1d: bool = False,
) -> torch.optim.Optimizer:
    """SOAP (Vyas et al., 2024) from ``pytorch-optimizer``: Adam in Shampoo's eigenbasis, refreshed
    every ``precondition_frequency`` steps; 1-D tensors get plain Adam unless ``precondition_1d``."""
    from pytorch_optimizer import SOAP

    return SOAP(
        param_groups(model.parameters(), weight_decay),
        lr=lr,
        betas=tuple(betas),
        precondition_frequency=precondition_frequency,
        max_precondition_dim=max_precondition_dim,
        precondition_1d=precondition_1d,
    )
