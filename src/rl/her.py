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

Relabelling (the "future" strategy, ``her_k`` per transition, adapted to "at least" goals): after a
rollout, every transition whose window ended inside it is stored again ``her_k`` times, each with a goal
``g'`` that the window *met*: draw a step ``t' >= t`` of the same window uniformly, then ``g'`` from the
training goals' distribution restricted to the goals the growth ``c_t'+1`` reached (annual return uniform in
``[goal_low, min(annual(c_t'+1), goal_high)]``). Where ``c_t'+1`` reached no goal of that range the relabel
is not stored. Andrychowicz et al. relabel with the achieved goal itself; here that put most copies on goals
outside the trained range, and self-imitation of them dragged the policy back to its behaviour (on the goal
task of ``tests/rl/test_learning.py``, after 30 iterations: 0.117 of the goals reached, against 0.189 without
relabels; the achieved goal kept only inside the range 0.367, this rule 0.354). The goal rewards from t
to the window's end are recomputed for ``g'``; the return beyond the window does not depend on the goal
(a new window draws a new one), so the relabelled return is the original one plus the discounted change
in goal rewards. As for self-imitation (:mod:`src.rl.sil`), a
transition is stored once its episode has ended, with its Monte-Carlo return.

A step that ends an episode by the length limit is bootstrapped with the value of the state
it reached *in the same window* (same goal, growth so far, one bar further on): the goal a
restarted episode draws belongs to another episode. Where the window had also ended (its last
bar), the next window's goal is a fresh draw either way: the bootstrap uses the one drawn, a
one-sample estimate. The steps of a window cut short by the length limit are not relabelled
(their bootstrap depends on their own goal).
"""

from __future__ import annotations

import torch

from src.envs.market_env import Obs
from src.rl.addons import Batch, Iteration
from src.rl.replay import ReplayBuffer, ReplayConfig
from src.rl.sil import FinishedEpisodes, SelfImitation


def window_goal(annual_return: torch.Tensor | float, horizon: int, bars_per_year: float) -> torch.Tensor:
    """Log growth over ``horizon`` bars equivalent to an annualised return."""
    return torch.log1p(torch.as_tensor(annual_return, dtype=torch.float32)) * horizon / bars_per_year


class GoalTracker:
    """Goal, achieved growth and window step of N episodes; attaches goal features to observations."""

    kind = "goals"

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
        """Advance by one bar of (unscaled) log growth; returns this step's record and goal reward.
        ``bootstrap_goal`` is then the goal features of the state each step reached (see the module docstring)."""
        c_after = self.c + log_growth
        window_over = self.j == self.k - 1
        end = window_over | dones
        same_window = goal_features(self.g, c_after, self.j + 1, self.k, self.scale)
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
        self.bootstrap_goal = torch.where(window_over[:, None], self.features(), same_window)
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
    bars_per_year: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HER "future" relabels of a (T, N) rollout, for "at least g" goals (see the module docstring).

    Args:
        rec: stacked :meth:`GoalTracker.step` records, each (T, N).
        returns: (T, N) returns of the original transitions (goal rewards included).

    Returns:
        ``stored`` (K, T, N) bool: the relabel is kept (its window ended inside the rollout and the growth
        achieved at t' met a goal of the training range); ``goals`` (K, T, N): the relabelled goals;
        ``features`` (K, T, N, 2); ``returns`` (K, T, N).
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
    u = torch.rand(2, cfg.her_k, t_len, n, device=end.device, generator=generator)
    future = (time + (u[0] * (to_end + 1)).floor().long()).clamp(max=t_len - 1)  # t' in [t, window end]
    achieved = torch.gather(c_after.expand(cfg.her_k, t_len, n), 1, future)  # at t'
    # a goal of the training range that the growth at t' met: annual return in [low, min(achieved, high)]
    top = torch.expm1(achieved * bars_per_year / k).clamp(max=cfg.goal_high)
    goals = window_goal(cfg.goal_low + u[1] * (top - cfg.goal_low), k, bars_per_year).to(c_after.device)
    goals = torch.minimum(goals, achieved)  # met, also after the round trip through annual returns
    stored = complete & (top >= cfg.goal_low)
    delta = torch.zeros_like(goals)
    for d in range(k):  # goal rewards from t to the window's end, recomputed for g'
        s = (time + d).clamp(max=t_len - 1)
        valid = (d <= to_end) & complete
        c_s = torch.gather(c_after, 0, s)
        change = (c_s >= goals).to(goals.dtype) - (c_s >= g).to(goals.dtype)
        delta += torch.where(valid, gamma**d * w * change, torch.zeros_like(change))
    feats = goal_features(goals, rec["c_before"].expand_as(goals), rec["j"].expand_as(goals), k, reward_scale)
    return stored, goals, feats, returns + delta


class Hindsight(SelfImitation):
    """``replay=her``: goal rewards added to the rewards, finished episodes stored with ``her_k`` "future"
    relabels each, and the self-imitation loss on them (:class:`~src.rl.sil.SelfImitation`)."""

    changes_rewards = True
    goal_dim = 2

    def evaluation_tracker(self, module) -> GoalTracker:
        """One env asked for ``replay.eval_goal``."""
        m = module.market
        return GoalTracker(
            self.cfg, 1, m.bars_per_year, module.ppo.reward_scale, m.device, fixed_goal=self.cfg.eval_goal
        )

    def setup(self, module) -> None:
        m, p = module.market, module.ppo
        self.buffer = ReplayBuffer(self.cfg, m.window, m.num_features, module.device)
        self.episodes = FinishedEpisodes(p.gamma, module.env.max_len + p.rollout_steps)
        gen = torch.Generator(device=module.device)
        gen.manual_seed(int(module.cfg.seed) * 1000 + 500 + module.global_rank)
        self.goals = GoalTracker(self.cfg, p.num_envs, m.bars_per_year, p.reward_scale, module.device, gen)
        self.relabel_gen = torch.Generator(device=module.device)  # its own: her_k must not change the goals drawn
        self.relabel_gen.manual_seed(int(module.cfg.seed) * 1000 + 600 + module.global_rank)
        self.gamma, self.scale, self.bpy = p.gamma, p.reward_scale, m.bars_per_year

    def tracker(self) -> GoalTracker:
        return self.goals

    def rewards(self, it: Iteration, rewards: torch.Tensor) -> torch.Tensor:
        g = it.rollout.her["goal_reward"]
        it.logs["her/goal_reward_mean"] = g.mean()
        it.logs["her/goal_reached_frac"] = (g > 0).float().mean()
        return rewards + g

    def observe(self, it: Iteration, rule, batch: Batch, rewards: torch.Tensor) -> None:
        b, k = it.rollout, self.cfg.her_k
        fields = {"market": b.market, "position": b.position, "actions": b.actions, "goal_features": b.goal}
        fields.update({f"her_{n}": v for n, v in b.her.items()}, truncated=b.truncated)
        span, ret, ready = self.episodes.push(fields, rewards, b.terminated, b.truncated, it.raw_next_values)
        rec = {n[4:]: v for n, v in span.items() if n.startswith("her_")}
        stored, _, feats, ret_k = relabel_future(rec, ret, self.cfg, self.gamma, self.scale, self.bpy, self.relabel_gen)
        keep = ready.nonzero(as_tuple=True)
        whole = ready & ~_cut_windows(rec, span["truncated"], self.cfg.her_horizon)
        relabel = [(whole & stored[i]).nonzero(as_tuple=True) for i in range(k)]
        m, pos, a = span["market"], span["position"], span["actions"]
        cat = lambda x, rx: torch.cat([x[keep], *(rx(i)[relabel[i]] for i in range(k))])  # noqa: E731
        goal = cat(span["goal_features"], lambda i: feats[i])
        returns = cat(ret, lambda i: ret_k[i])
        obs = Obs(cat(m, lambda i: m), cat(pos, lambda i: pos), goal)
        self.buffer.add(obs, cat(a, lambda i: a), returns)
        it.logs["her/stored"] = torch.tensor(float(returns.numel()))
        gain = torch.cat([ret_k[i][relabel[i]] - ret[relabel[i]] for i in range(k)]) if k else ret[:0]
        if gain.numel():
            it.logs["her/relabel_return_gain"] = gain.mean()
        self._log(it, ready)

    def extra_state(self) -> dict:
        goals = {**self.goals.state_dict(), "generator": self.goals.gen.get_state()}
        return {**super().extra_state(), "goals": goals, "relabel_generator": self.relabel_gen.get_state()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if "goals" in state:
            self.goals.load_state_dict(state["goals"])
            self.goals.gen.set_state(state["goals"]["generator"])
        if "relabel_generator" in state:
            self.relabel_gen.set_state(state["relabel_generator"])


def _cut_windows(rec: dict[str, torch.Tensor], truncated: torch.Tensor, horizon: int) -> torch.Tensor:
    """(T, N) bool: the step's goal window was ended by the episode-length limit before its last bar. Such a
    window's return is bootstrapped with V of the state reached *under its own goal*, which a relabelled goal
    would change; those steps are stored with their own goal only."""
    end, j = rec["end"], rec["j"]
    cut_here = end & truncated & (j < horizon - 1)
    out = torch.zeros_like(end)
    nxt = torch.zeros_like(end[0])
    for t in range(end.shape[0] - 1, -1, -1):
        nxt = torch.where(end[t], cut_here[t], nxt)
        out[t] = nxt
    return out
