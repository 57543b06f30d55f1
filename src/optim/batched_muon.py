"""Muon for a population's stacked matrices: every member's matrix orthogonalised on its own, in one batched call.

A population (:mod:`src.models.population`) holds each weight matrix of its K members as one (K, rows, cols) tensor.
``torch.optim.Muon`` only takes 2-D matrices; :class:`BatchedMuon` is the same update for a stack of them:
per member, the momentum ``buf = lerp(buf, g, 1 - momentum)``, the Nesterov blend ``lerp(g, buf, momentum)``,
Newton-Schulz orthogonalisation in bfloat16 with torch's quintic coefficients, each matrix normalised by its
own Frobenius norm, the learning rate adjusted by the member matrix's shape, decoupled weight decay. The
Newton-Schulz products are batched matmuls over the K members (``torch.baddbmm``), so one optimizer step costs
a handful of kernels per weight position instead of K x as many. A member's step equals ``torch.optim.Muon``'s
on that member's matrix alone (``tests/training/test_population.py``).
"""

from __future__ import annotations

import math

import torch
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, DEFAULT_NS_STEPS, EPS


def newton_schulz(
    g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype=torch.bfloat16
) -> torch.Tensor:
    """(K, rows, cols) -> each matrix's approximate orthogonalisation (torch's ``_zeropower_via_newtonschulz``,
    which computes in bfloat16)."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / x.flatten(1).norm(dim=1).clamp(min=eps)[:, None, None]
    for _ in range(steps):
        gram = x @ x.mT
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """torch's ``_adjust_lr`` for a member matrix of shape (rows, cols)."""
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class BatchedMuon(torch.optim.Optimizer):
    """``torch.optim.Muon`` over (K, rows, cols) stacks of K independent matrices (see the module docstring)."""

    ns_dtype = torch.bfloat16  # torch's; a test sets float32 to compare runs without bfloat16's rounding

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (DEFAULT_A, DEFAULT_B, DEFAULT_C),
        eps: float = EPS,
        ns_steps: int = DEFAULT_NS_STEPS,
        adjust_lr_fn: str | None = None,
    ) -> None:
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov, "eps": eps,
                    "ns_coefficients": ns_coefficients, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn}  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 3:
                    raise ValueError(
                        f"BatchedMuon takes (members, rows, cols) stacks, got a tensor of {tuple(p.shape)}"
                    )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)
                update = p.grad.lerp(buf, mom) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape[1], p.shape[2]))
        return loss
