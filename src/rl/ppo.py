"""PPO loss terms (Schulman et al., 2017) as pure functions, CleanRL's conventions."""

from __future__ import annotations

import torch


def normalize_advantages(adv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-std advantages (population std, like CleanRL uses per minibatch)."""
    return (adv - adv.mean()) / (adv.std(unbiased=False) + eps)


def policy_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean of max(-A r, -A clip(r, 1 - c, 1 + c)), r = pi_new / pi_old.

    Returns the loss and diagnostics: ``approx_kl`` (the low-variance
    estimator mean((r - 1) - log r), Schulman 2020) and ``clipfrac``.
    """
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    with torch.no_grad():
        stats = {"approx_kl": ((ratio - 1) - log_ratio).mean(), "clipfrac": ((ratio - 1).abs() > clip).float().mean()}
    return loss, stats


def value_loss(new_v: torch.Tensor, old_v: torch.Tensor, returns: torch.Tensor, clip: float | None) -> torch.Tensor:
    """0.5 * squared error; with ``clip``, the max of the clipped and unclipped errors (PPO2 style)."""
    err = (new_v - returns) ** 2
    if clip is not None:
        clipped = old_v + (new_v - old_v).clamp(-clip, clip)
        err = torch.max(err, (clipped - returns) ** 2)
    return 0.5 * err.mean()


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - pred) / Var(target); nan when the target is constant."""
    var = target.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (target - pred).var(unbiased=False) / var)
