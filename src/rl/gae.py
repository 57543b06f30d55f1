"""Generalised advantage estimation (Schulman et al., 2016), with truncation handled correctly.

``next_values[t]`` is the value of the state actually reached after step t:
for a truncated episode that is the final observation's value (the episode
could have gone on), for a terminated one it is ignored (no future).
``dones`` (terminated or truncated) cuts the lambda-recursion at episode ends.
"""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over a (T, N) rollout.

    Args:
        rewards, values, next_values: (T, N) float.
        terminated: (T, N) bool, episode ended with no future value.
        dones: (T, N) bool, episode ended for any reason (terminated or truncated).
        gamma: discount; lam: GAE lambda.

    Returns:
        advantages and returns (= advantages + values), both (T, N).
    """
    not_term = 1.0 - terminated.to(rewards.dtype)
    not_done = 1.0 - dones.to(rewards.dtype)
    deltas = rewards + gamma * not_term * next_values - values
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv, adv + values


def discounted_returns(rewards: torch.Tensor, gamma: float, bootstrap: float | torch.Tensor = 0.0) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} along one path of (T,) rewards, with G_T = ``bootstrap``."""
    out = torch.empty_like(rewards)
    g = torch.as_tensor(bootstrap, dtype=rewards.dtype, device=rewards.device)
    for t in range(rewards.shape[0] - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out
