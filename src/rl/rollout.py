"""Preallocated (T, N) rollout storage and its collection loop, CleanRL order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from src.envs.market_env import MarketEnv, Obs
from src.rl.her import GoalTracker


@dataclass
class Rollout:
    """One rollout of T steps from N envs; every tensor is (T, N, ...) on the model's device."""

    market: torch.Tensor
    position: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    next_values: torch.Tensor
    final_t: torch.Tensor
    final_position: torch.Tensor
    net_return: torch.Tensor
    turnover: torch.Tensor
    goal: torch.Tensor | None = None  # (T, N, 2) goal features the policy saw (replay=her)
    next_goal: torch.Tensor | None = None  # (T, N, 2) goal features after the step (bootstrap of cut episodes)
    her: dict[str, torch.Tensor] | None = None  # (T, N) GoalTracker records
    member: torch.Tensor | None = None  # (T, N) long: the ensemble member acting (ensembles)

    @classmethod
    def allocate(cls, steps: int, env: MarketEnv, goal_conditioned: bool = False, members: bool = False) -> Rollout:
        n, dev = env.n, env.m.device
        obs = getattr(env, "obs_shape", (env.m.window, env.m.num_features))  # a portfolio: (K, window, F)
        pos, act = getattr(env, "position_dim", 1), getattr(env, "action_shape", ())  # a portfolio: K, (A,)

        def z(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(steps, n, *shape, dtype=dtype, device=dev)

        return cls(
            market=z(*obs),
            position=z(pos),
            actions=z(*act),
            logprobs=z(),
            values=z(),
            rewards=z(),
            terminated=z(dtype=torch.bool),
            truncated=z(dtype=torch.bool),
            next_values=z(),
            final_t=z(dtype=torch.long),
            final_position=z(*((pos,) if pos > 1 else ())),
            net_return=z(),
            turnover=z(),
            goal=z(2) if goal_conditioned else None,
            next_goal=z(2) if goal_conditioned else None,
            her={k: z(dtype=d) for k, d in HER_FIELDS.items()} if goal_conditioned else None,
            member=z(dtype=torch.long) if members else None,
        )

    @property
    def dones(self) -> torch.Tensor:
        return self.terminated | self.truncated

    def flat_obs(self) -> Obs:
        t, n = self.actions.shape[:2]
        goal = None if self.goal is None else self.goal.view(t * n, 2)
        member = None if self.member is None else self.member.view(t * n)
        return Obs(self.market.view(t * n, *self.market.shape[2:]), self.position.view(t * n, -1), goal, member)


HER_FIELDS = {
    "c_before": torch.float32,
    "c_after": torch.float32,
    "goal": torch.float32,
    "j": torch.long,
    "end": torch.bool,
    "goal_reward": torch.float32,
}


def act(model: torch.nn.Module, obs: Obs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The behaviour policy's step: a sampled action, its log-probability and the state's value."""
    dist, value = model(obs)
    action = dist.sample()
    return action, dist.log_prob(action), value


@torch.no_grad()
def collect(
    model: torch.nn.Module,
    env: MarketEnv,
    obs: Obs,
    buf: Rollout,
    goals: GoalTracker | None = None,
    policy: Callable[[Obs], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
    members=None,
) -> Obs:
    """Fill ``buf`` with ``buf.steps`` env steps; return the observation to continue from.

    With ``goals`` (``replay=her``) the policy sees the goal features, and the tracker's
    per-step records (achieved growth, goal, window step, goal reward) go to ``buf.her``.
    ``policy``: :func:`act` for ``model`` in another form (``compile=true``: compiled); default :func:`act`.
    With ``members`` (an ensemble's :class:`~src.models.ensemble.MemberTracker`) each episode's acting member
    rides along in the observations and goes to ``buf.member``.

    ``next_values`` is V(s_{t+1}) of the state reached: the next stored value,
    V of the final observation for truncated episodes (one batched pass at
    the end, so the loop has no host synchronisation), unused when terminated.
    """
    steps = buf.actions.shape[0]
    for t in range(steps):
        buf.market[t].copy_(obs.market)
        buf.position[t].copy_(obs.position)
        if goals is not None:
            obs = goals.attach(obs)
            buf.goal[t] = obs.goal
        if members is not None:
            obs = members.attach(obs)
            buf.member[t] = obs.member
        action, buf.logprobs[t], buf.values[t] = act(model, obs) if policy is None else policy(obs)
        buf.actions[t] = action
        obs, reward, term, trunc, info = env.step(action)
        buf.rewards[t], buf.terminated[t], buf.truncated[t] = reward, term, trunc
        buf.final_t[t], buf.final_position[t] = info["final_t"], info["final_position"]
        buf.net_return[t], buf.turnover[t] = info["net_return"], info["turnover"]
        if goals is not None:
            for k, v in goals.step(reward, term | trunc).items():
                buf.her[k][t] = v
            buf.next_goal[t] = goals.bootstrap_goal
        if members is not None:
            members.step(reward, term | trunc)
    last = obs if goals is None else goals.attach(obs)
    buf.next_values[:-1] = buf.values[1:]
    buf.next_values[-1] = model.value(last if members is None else members.attach(last))
    idx = buf.truncated.nonzero(as_tuple=True)
    if idx[0].numel():  # the state a cut episode reached, valued by its own goal window and acting member
        final = env.observe(buf.final_t[idx], buf.final_position[idx])
        goal = None if goals is None else buf.next_goal[idx]
        member = None if members is None else buf.member[idx]
        if member is None and hasattr(model, "members_of"):  # a population: each row's member, from its env
            member = model.members_of(idx[1], env.n)
        buf.next_values[idx] = model.value(Obs(final.market, final.position, goal, member))
    return obs
