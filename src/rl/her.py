"""Hindsight experience replay (Andrychowicz et al., 2017) for a goal-conditioned trading policy.

Goal: each training episode is cut into windows of ``her_horizon`` bars; a
window has a goal ``g``, a log growth of equity to reach (drawn from an
annualised range for behaviour, fixed by ``replay.eval_goal`` at evaluation).
The achieved goal of a state is ``c``, the log growth since the window began.
The goal reward after every step is ``goal_weight * 1[c_t+1 >= g]`` (HER's
sparse "goal satisfied" reward, one-sided because a trader wants *at least*
the target), added to the extrinsic reward. The policy and critic see the goal
as two extra inputs: the growth still missing ``(g - c) * reward_scale`` and
the fraction of the window left.

Relabelling ("future" strategy, ``her_k`` per transition): after a rollout,
every transition whose window ended inside it is stored again ``her_k`` times
with goals ``g' = c_t'+1`` actually achieved at a uniformly drawn step
``t' >= t`` of the same window. The goal rewards from t to the window's end are
recomputed for ``g'``; the return beyond the window does not depend on the goal
(a new window draws a new one), so the relabelled return is the original one
plus the discounted change in goal rewards. Transitions whose window is still
open at the rollout's end are not stored (PPO still learns from them).
"""

from __future__ import annotations

import torch

from src.envs.market_env import Obs
from src.rl.replay import ReplayConfig


def window_goal(annual_return: torch.Tensor | float, horizon: int, bars_per_year: float) -> torch.Tensor:
    """Log growth over ``horizon`` bars equivalent to an annualised return."""
    return torch.log1p(torch.as_tensor(annual_return, dtype=torch.float32)) * horizon / bars_per_year


class GoalTracker:
    """Goal, achieved growth and window step of N episodes; attaches goal features to observations."""

    def __init__(
        self,
        cfg: ReplayConfig,
        n: int,
        bars_per_year: float,
        reward_scale: float,
        device: torch.device | str,
        generator: torch.Generator | None = None,
        fixed_goal: float | None = None,
    ) -> None:
        self.cfg, self.n, self.k = cfg, n, cfg.her_horizon
        self.bpy, self.scale, self.gen, self.fixed = bars_per_year, reward_scale, generator, fixed_goal
        self.c = torch.zeros(n, device=device)
        self.g = torch.zeros(n, device=device)
        self.j = torch.zeros(n, dtype=torch.long, device=device)
        self.g.copy_(self._draw(n))

    def _draw(self, n: int) -> torch.Tensor:
        dev = self.c.device
        if self.fixed is not None:
            return window_goal(self.fixed, self.k, self.bpy).to(dev).expand(n).clone()
        u = torch.rand(n, device=dev, generator=self.gen)
        annual = self.cfg.goal_low + (self.cfg.goal_high - self.cfg.goal_low) * u
        return window_goal(annual, self.k, self.bpy).to(dev)

    def features(self) -> torch.Tensor:
        return goal_features(self.g, self.c, self.j, self.k, self.scale)

    def attach(self, obs: Obs) -> Obs:
        return Obs(obs.market, obs.position, self.features())

    def step(self, log_growth: torch.Tensor, dones: torch.Tensor) -> dict[str, torch.Tensor]:
        """Advance by one bar of (unscaled) log growth; returns this step's record and goal reward."""
        c_after = self.c + log_growth
        end = (self.j == self.k - 1) | dones
        rec = {
            "c_before": self.c.clone(),
            "c_after": c_after,
            "goal": self.g.clone(),
            "j": self.j.clone(),
            "end": end,
            "goal_reward": self.cfg.goal_weight * (c_after >= self.g).to(log_growth.dtype),
        }
        self.c = torch.where(end, torch.zeros_like(c_after), c_after)
        self.j = torch.where(end, torch.zeros_like(self.j), self.j + 1)
        self.g = torch.where(end, self._draw(self.n), self.g)
        return rec

    def state_dict(self) -> dict:
        return {"c": self.c.cpu(), "g": self.g.cpu(), "j": self.j.cpu()}

    def load_state_dict(self, s: dict) -> None:
        self.c.copy_(s["c"])
        self.g.copy_(s["g"])
        self.j.copy_(s["j"])


def goal_features(g: torch.Tensor, c: torch.Tensor, j: torch.Tensor, k: int, scale: float) -> torch.Tensor:
    """(..., 2): growth still missing in log-percent, and the fraction of the window left."""
    return torch.stack([(g - c) * scale, (k - j).to(g.dtype) / k], dim=-1)


def relabel_future(
    rec: dict[str, torch.Tensor],
    returns: torch.Tensor,
    cfg: ReplayConfig,
    gamma: float,
    reward_scale: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HER "future" relabels of a (T, N) rollout.

    Args:
        rec: stacked :meth:`GoalTracker.step` records, each (T, N).
        returns: (T, N) returns of the original transitions (goal rewards included).

    Returns:
        ``complete`` (T, N) bool: the window ended inside the rollout (only these are stored);
        ``goals`` (K, T, N): the relabelled goals; ``features`` (K, T, N, 2); ``returns`` (K, T, N).
    """
    c_after, end, g, k, w = rec["c_after"], rec["end"], rec["goal"], cfg.her_horizon, cfg.goal_weight
    t_len, n = end.shape
    to_end = torch.zeros_like(rec["j"])
    complete = torch.zeros_like(end)
    nxt_to_end = torch.zeros_like(to_end[0])
    nxt_complete = torch.zeros_like(end[0])
    for t in range(t_len - 1, -1, -1):
        to_end[t] = torch.where(end[t], torch.zeros_like(nxt_to_end), nxt_to_end + 1)
        complete[t] = end[t] | nxt_complete
        nxt_to_end, nxt_complete = to_end[t], complete[t]
    time = torch.arange(t_len, device=end.device)[:, None].expand(t_len, n)
    u = torch.rand(cfg.her_k, t_len, n, device=end.device, generator=generator)
    future = (time + (u * (to_end + 1)).floor().long()).clamp(max=t_len - 1)  # t' in [t, window end]
    goals = torch.gather(c_after.expand(cfg.her_k, t_len, n), 1, future)  # achieved at t'
    delta = torch.zeros_like(goals)
    for d in range(k):  # goal rewards from t to the window's end, recomputed for g'
        s = (time + d).clamp(max=t_len - 1)
        valid = (d <= to_end) & complete
        c_s = torch.gather(c_after, 0, s)
        change = (c_s >= goals).to(goals.dtype) - (c_s >= g).to(goals.dtype)
        delta += torch.where(valid, gamma**d * w * change, torch.zeros_like(change))
    feats = goal_features(goals, rec["c_before"].expand_as(goals), rec["j"].expand_as(goals), k, reward_scale)
    return complete, goals, feats, returns + delta
