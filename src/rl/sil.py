"""Self-imitation learning (Oh et al., 2018) from replay: ``replay=uniform|prioritized``.

Oh et al.'s argument needs the return a past action *actually* led to: the Monte-Carlo return of a
finished episode, R_t = sum_k gamma^k r_(t+k) to the episode's end. A rollout (128 bars) is shorter than a
training episode (256-512 bars), so :class:`FinishedEpisodes` holds every step until its episode ends, across
rollouts, then hands it over with its return. An episode that ends by bankruptcy has no future (R ends
there); one cut by the episode-length limit (the market goes on) is bootstrapped once, at its last step,
with the critic's value of the state it reached, discounted by gamma^(steps to the end): for a 256-bar
episode at gamma = 0.99 that term weighs 0.08 at the episode's first step and 1 only at its last.

Every PPO minibatch step then draws a replay batch (uniform, or prioritized by the gap: Schaul et al., 2016,
:mod:`src.rl.replay`) and adds

    coef * mean_i w_i [ -log pi(a_i | s_i) (R_i - V(s_i))+ / sigma  +  value_coef / 2 ((R_i - V(s_i))+ / sigma)^2 ]

to the loss: the policy imitates past actions that did *better* than the critic now expects, and the critic
is pulled up to those returns. sigma is the value normaliser's std: both terms are in the critic's units, so
their weight against PPO's (normalised) advantages does not depend on the market's return scale; Oh et al.
clip Atari's rewards to the same end.
"""

from __future__ import annotations

import torch

from src.envs.market_env import Obs
from src.rl.addons import AddOn, Batch, Iteration
from src.rl.replay import ReplayBuffer, ReplayConfig, annealed_beta, sil_loss


class FinishedEpisodes:
    """Steps waiting for their episode to end; see the module docstring.

    ``push`` takes a rollout's (T, N, ...) fields with its rewards and episode ends and returns every pending
    and new field concatenated along time (L + T, N, ...), the Monte-Carlo returns over that span and the
    (L + T, N) mask of the steps whose episode has now ended and that were not handed over before. Steps
    still open are kept (at most ``max_pending`` per env; older ones are dropped and counted).
    """

    def __init__(self, gamma: float, max_pending: int) -> None:
        self.gamma, self.max_pending = gamma, max_pending
        self.pending: dict[str, torch.Tensor] | None = None
        self.dropped = 0

    def push(
        self,
        fields: dict[str, torch.Tensor],
        rewards: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
        bootstrap: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        new = {**fields, "_r": rewards, "_term": terminated, "_trunc": truncated, "_boot": bootstrap}
        new["_open"] = torch.ones_like(terminated)
        # copies, never views: the rollout's buffers are overwritten by the next rollout
        span = (
            {k: v.clone() for k, v in new.items()}
            if self.pending is None
            else {k: torch.cat([self.pending[k], v]) for k, v in new.items()}
        )
        r, term, trunc, boot = span["_r"], span["_term"], span["_trunc"], span["_boot"]
        g = torch.zeros_like(r[0])
        ended = torch.zeros_like(term[0])
        ret, fin = torch.zeros_like(r), torch.zeros_like(term)
        for t in range(r.shape[0] - 1, -1, -1):
            done = term[t] | trunc[t]
            tail = torch.where(trunc[t], boot[t], torch.zeros_like(g))  # bootstrapped once, where the limit cut it
            g = r[t] + self.gamma * torch.where(done, tail, g)
            ended = ended | done
            ret[t], fin[t] = g, ended
        ready = fin & span["_open"]
        still_open = span["_open"] & ~fin
        span["_open"] = still_open
        rows = still_open.any(dim=1).nonzero()  # one host sync per rollout
        first = int(rows[0]) if rows.numel() else r.shape[0]
        first = max(first, r.shape[0] - self.max_pending)
        self.dropped += int(still_open[:first].sum())
        self.pending = {k: v[first:] for k, v in span.items()}
        return {k: v for k, v in span.items() if not k.startswith("_")}, ret, ready

    def forget_open(self) -> None:
        """Drop every step still waiting (its episode was cut without an end), counted in ``dropped``."""
        if self.pending is not None:
            self.dropped += int(self.pending["_open"].sum())
        self.pending = None

    def state_dict(self) -> dict:
        pending = None if self.pending is None else {k: v.cpu() for k, v in self.pending.items()}
        return {"pending": pending, "dropped": self.dropped}

    def load_state_dict(self, state: dict, device) -> None:
        p = state.get("pending")
        self.pending = None if p is None else {k: v.to(device) for k, v in p.items()}
        self.dropped = int(state.get("dropped", 0))


class SelfImitation(AddOn):
    """``replay=uniform|prioritized``: the replay buffer, the finished-episode store and the SIL loss term.

    Args: the fields of :class:`~src.rl.replay.ReplayConfig` (``conf/replay/*.yaml``).
    """

    needs_critic = True

    def __init__(self, **kwargs) -> None:
        self.cfg = ReplayConfig(**kwargs)
        self.buffer: ReplayBuffer | None = None
        self.episodes: FinishedEpisodes | None = None
        self._sampled: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, module) -> None:
        m = module.market
        self.buffer = ReplayBuffer(self.cfg, m.window, m.num_features, module.device)
        self.episodes = FinishedEpisodes(module.ppo.gamma, module.env.max_len + module.ppo.rollout_steps)

    def observe(self, it: Iteration, rule, batch: Batch, rewards: torch.Tensor) -> None:
        """Hand the steps whose episode ended to the buffer, with their Monte-Carlo returns."""
        b = it.rollout
        fields = {"market": b.market, "position": b.position, "actions": b.actions}
        if b.member is not None:  # an ensemble: imitate with the member that acted
            fields["member"] = b.member
        span, ret, ready = self.episodes.push(fields, rewards, b.terminated, b.truncated, it.raw_next_values)
        keep = ready.nonzero(as_tuple=True)
        member = span["member"][keep] if "member" in span else None
        obs = Obs(span["market"][keep], span["position"][keep], member=member)
        self.buffer.add(obs, span["actions"][keep], ret[keep])
        self._log(it, ready)

    def episodes_broken(self) -> None:
        self.episodes.forget_open()

    def _log(self, it: Iteration, ready: torch.Tensor) -> None:
        it.logs["replay/size"] = torch.tensor(float(self.buffer.size))
        it.logs["replay/stored"] = ready.sum().float()
        it.logs["replay/dropped_open_steps"] = torch.tensor(float(self.episodes.dropped))
        if self.buffer.tree is not None:
            it.logs["replay/priority_mean"] = self.buffer.tree.leaves(self.buffer.size).mean().float()
            it.logs["replay/beta"] = torch.tensor(annealed_beta(self.cfg.beta0, it.progress))

    def loss(self, model, mb: Batch, idx: torch.Tensor, it: Iteration, rule, terms: dict) -> torch.Tensor | None:
        rb, rc = self.buffer, self.cfg
        self._sampled = None
        if rb.size < rc.batch_size:
            return None
        sample, w = rb.sample(rc.batch_size, annealed_beta(rc.beta0, it.progress))
        o, a, r = rb.get(sample)
        dist, v = model(o)
        loss, gap, stats = sil_loss(dist.log_prob(a), rule.raw_values(v), r, w, rc.value_coef, rule.value_std())
        terms.update(stats)
        terms["sil_is_weight_mean"] = w.mean()
        self._sampled = (sample, gap)
        return rc.coef * loss

    def after_step(self) -> None:
        if self._sampled is not None:
            self.buffer.update_priorities(*self._sampled)

    def extra_state(self) -> dict:
        return {"replay": self.buffer.state_dict(), "episodes": self.episodes.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "replay" in state:
            self.buffer.load_state_dict(state["replay"])
        if "episodes" in state:
            self.episodes.load_state_dict(state["episodes"], self.buffer.actions.device)
