"""Gradient-norm clipping with a small per-call cost.

``torch.nn.utils.clip_grad_norm_`` regroups the tensors by device and dtype twice per call, which
on a CPU costs about as much as the clipping itself for a small model clipped 320 times per PPO
iteration. This is the same computation (2-norm over all gradients, scale by
``max_norm / (norm + 1e-6)`` capped at 1) for parameters that share one device, in place on ``.grad``
(:func:`clip_grad_norm_`) or as a pure function of gradient tensors (:func:`clipped`, which
``torch.compile`` can trace into a larger graph).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def clip_scale(total: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The factor that brings a joint gradient norm ``total`` down to at most ``max_norm`` (1 when it is below)."""
    return (max_norm / (total + 1e-6)).clamp(max=1.0)


def clip_grad_norm_(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients of ``params`` in place so their joint 2-norm is at most ``max_norm``.

    Returns the joint norm before clipping (non-finite if any gradient is). Parameters without a
    gradient are skipped; with none at all the norm is 0.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, clip_scale(total, max_norm))
    return total


def clipped(grads: Sequence[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """:func:`clip_grad_norm_` as a pure function: (the clipped gradients, the joint norm before clipping)."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = clip_scale(total, max_norm)
    return [g * scale for g in grads], total
