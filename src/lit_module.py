"""The LightningModule: one training step = one rollout from the vectorised env + the policy update.

``algo=ppo`` (default) or ``algo=grpo`` (:mod:`src.rl.grpo`: groups of trajectories from shared
start bars, no critic); ``curiosity=icm`` adds intrinsic rewards and the ICM losses
(:mod:`src.rl.icm`); ``replay=uniform|prioritized|her`` adds self-imitation from a replay buffer
to every PPO minibatch (:mod:`src.rl.replay`, :mod:`src.rl.her`).

Manual optimisation: the PPO epochs and minibatches are looped explicitly in
``training_step`` and every ``optimizer.step()`` counts as one Lightning
global step, so ``trainer.max_steps`` is a budget of gradient updates.
Validation walks the validation split deterministically; test walks the test
split once at the end of the run, with the selected (best) weights
(:mod:`src.lit_eval`); what checkpoints carry besides the weights is in
:mod:`src.lit_state`.
"""

from __future__ import annotations

import time
from functools import partial

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from src.augment import Augmenter
from src.data.market import Market
from src.envs.augmented_env import AugmentedEnv
from src.envs.market_env import MarketEnv, Obs
from src.errors import ConfigError, NumericalFault
from src.evaluation import EvalResult
from src.lit_eval import EvaluationHooks
from src.lit_state import CheckpointHooks
from src.models.ensemble import Ensemble, EnsembleConfig
from src.optim.clip import clip_grad_norm_, clipped
from src.optim.schedules import lr_multiplier
from src.rl.gae import compute_gae
from src.rl.grpo import GRPOConfig, group_advantages, grpo_loss
from src.rl.her import GoalTracker, relabel_future
from src.rl.icm import ICM
from src.rl.ppo import PPOConfig, explained_variance, normalize_advantages, policy_loss, value_loss
from src.rl.replay import ReplayBuffer, ReplayConfig, annealed_beta, sil_loss
from src.rl.rollout import Rollout, act, collect
from src.utils import build, compile_static


class _Forever(IterableDataset):
    """Training 'batches' are just ticks: the data comes from the env."""

    def __iter__(self):
        while True:
            yield 0


class _Joint(nn.Module):
    """The policy and the ICM as one module for the optimizer factories (``encoder`` exposed, so
    Muon still finds the transformer's hidden matrices; shared parameters are listed once)."""

    def __init__(self, model: nn.Module, icm: nn.Module) -> None:
        super().__init__()
        if hasattr(model, "encoder"):
            self.encoder = model.encoder
        self.policy, self.icm = model, icm

    def muon_matrices(self) -> list[nn.Parameter]:
        from src.optim.muon import hidden_matrices

        return hidden_matrices(self.policy)[0]


class PPOModule(EvaluationHooks, CheckpointHooks, L.LightningModule):
    """Actor-critic + PPO (or GRPO) on a :class:`Market`.

    Args:
        cfg: the resolved run configuration (a plain dict; saved in every checkpoint).
        market: the data; not a hyper-parameter, passed again when loading a checkpoint.
    """

    def __init__(self, cfg: dict, market: Market) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["market"])
        self.automatic_optimization = False
        self.cfg = OmegaConf.create(cfg)
        self.ppo: PPOConfig | GRPOConfig = build(self.cfg.algo)
        self.grpo = isinstance(self.ppo, GRPOConfig)
        self.market = market
        self.replay_cfg: ReplayConfig | None = build(self.cfg.replay) if self.cfg.get("replay") else None
        if self.grpo and self.replay_cfg is not None:
            raise ConfigError("replay needs a critic (self-imitation compares returns with V); algo=grpo has none")
        her = self.replay_cfg is not None and self.replay_cfg.goal_conditioned
        if her and self.cfg.get("ensemble") and int(self.cfg.ensemble.get("size", 1)) > 1:
            raise ConfigError("replay=her with an ensemble is not supported: use one goal-conditioned model")
        goal = {"goal_dim": 2} if her else {}
        shape = {"num_features": market.num_features, "window": market.window, **goal}
        shape["action_range"] = tuple(market.position_limits)  # the policy's support is what the env allows
        self.ensemble: EnsembleConfig | None = build(self.cfg.ensemble) if self.cfg.get("ensemble") else None
        if self.ensemble is not None and self.ensemble.size > 1:  # N members, one batched model
            self.model = Ensemble([build(self.cfg.model, **shape) for _ in range(self.ensemble.size)], self.ensemble)
        else:
            self.model = build(self.cfg.model, **shape)
        self.icm: ICM | None = (
            build(self.cfg.curiosity, num_features=market.num_features, window=market.window)
            if self.cfg.get("curiosity")
            else None
        )
        self.augmenter: Augmenter | None = build(self.cfg.augmentation) if self.cfg.get("augmentation") else None
        self.switched_augmentation: dict | None = None  # set when a target run switched augmentation on
        self.replay: ReplayBuffer | None = None
        self.goals: GoalTracker | None = None
        self._saved_extra: dict | None = None
        self.iterations = 0
        self.env: MarketEnv | None = None
        self.obs: Obs | None = None
        self.buf: Rollout | None = None
        self.env_steps = 0
        self.last_train_returns: torch.Tensor | None = None
        self.results: dict[str, dict[str, EvalResult]] = {}
        self._ep_acc: torch.Tensor | None = None  # running log growth of the episodes in progress
        self._saved_env: dict | None = None
        self._saved_rng: dict | None = None
        self.val_history: list[dict] = []
        self.max_faults = int(self.cfg.get("faults", {}).get("max_consecutive", 3))
        if self.max_faults < 1:
            raise ConfigError(f"faults.max_consecutive must be >= 1, got {self.max_faults}")
        self.faults = {"consecutive": 0, "total": 0}
        self._params: list[nn.Parameter] | None = None
        self._named: dict[str, nn.Parameter] | None = None
        # compile=true: PPO's minibatch loss (forward, losses and, through AOTAutograd, their backward) as
        # fused kernels; a one-off compile of ~30 s, then fewer per-op costs (what bounds small models on a CPU).
        # Plain PPO on one process goes further: loss, gradients and their clipping as one graph (_ppo_grads).
        compiled = bool(self.cfg.get("compile"))
        self._ppo_loss = compile_static(self._ppo_loss_eager) if compiled else self._ppo_loss_eager
        self._ppo_grads = compile_static(self._ppo_grads_eager) if compiled else None
        # ... and the behaviour policy's step in the rollout (an ensemble's batched members stay eager)
        plain = compiled and not isinstance(self.model, Ensemble)
        self._act = compile_static(partial(act, self.model)) if plain else None

    # ---- data: the env is the data source; loaders only tick the loops ----
    # (own generators: creating an iterator must not draw from the global RNG, or resumed runs would diverge)
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Forever(), batch_size=None, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None, generator=torch.Generator())

    test_dataloader = val_dataloader

    def setup(self, stage: str) -> None:
        self.market.to(self.device)
        if stage == "fit" and self.env is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(self.cfg.seed) * 1000 + self.global_rank)
            self.env = self._train_env(gen)
            self.obs = self.env.reset()
            rc = self.replay_cfg
            if rc is not None:
                self.replay = ReplayBuffer(rc, self.market.window, self.market.num_features, self.device)
                if rc.goal_conditioned:
                    ggen = torch.Generator(device=self.device)
                    ggen.manual_seed(int(self.cfg.seed) * 1000 + 500 + self.global_rank)
                    self.goals = GoalTracker(
                        rc, self.ppo.num_envs, self.market.bars_per_year, self.ppo.reward_scale, self.device, ggen
                    )
            if self._saved_env is not None:  # resuming a fit from a checkpoint: continue the same episodes
                self._restore_env(self._saved_env)
            if self._saved_extra is not None:
                self._restore_extra(self._saved_extra)
            self.buf = Rollout.allocate(self.ppo.rollout_steps, self.env, goal_conditioned=self.goals is not None)

    def _train_env(self, gen: torch.Generator) -> MarketEnv:
        grouped = {"episode_length": self.ppo.horizon, "group_size": self.ppo.group_size} if self.grpo else {}
        grouped["compile"] = bool(self.cfg.get("compile"))  # the fused env step (src/envs/market_env.py)
        if self.augmenter is not None:  # training episodes on their own augmented paths
            steps = self.ppo.horizon if self.grpo else self.ppo.rollout_steps
            return AugmentedEnv(self.market, self.ppo.num_envs, self.augmenter, gen, min_path=steps, **grouped)
        return MarketEnv(self.market, "train", self.ppo.num_envs, random_start=True, generator=gen, **grouped)

    def switch_on_augmentation(self, node: dict) -> bool:
        """Start augmenting training episodes now (the profitability target's 4th adjustment).

        The episodes in progress end here; the next ones walk augmented paths. The augmentation's config
        is saved in checkpoints, so a resumed run rebuilds the same env before restoring its state.
        Returns False (and changes nothing) when augmentation is already on or the policy is goal-conditioned.
        """
        if self.augmenter is not None or self.goals is not None:
            return False
        self.augmenter = build(OmegaConf.create(node))
        self.switched_augmentation = dict(node)
        self.env = self._train_env(self.env.gen)
        self.obs = self.env.reset()
        if self._ep_acc is not None:
            self._ep_acc.zero_()
        return True

    def configure_optimizers(self):
        opt = build(self.cfg.optimizer)(self.model if self.icm is None else _Joint(self.model, self.icm))
        scale = float(self.cfg.get("lr_scale", 1.0))  # one knob for every group's lr, whatever the optimizer
        if scale <= 0:
            raise ConfigError(f"lr_scale must be > 0, got {scale}")
        for g in opt.param_groups:
            g["lr"] *= scale
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 1
        fn = partial(lr_multiplier, total_steps=total, **OmegaConf.to_container(self.cfg.scheduler, resolve=True))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return [opt], [{"scheduler": sched, "interval": "step"}]

    # ---- training ----
    def training_step(self, batch, batch_idx: int) -> None:
        t0 = time.perf_counter()
        self.model.eval()  # no dropout while acting
        if self.grpo:  # every iteration: fresh groups, all members from their group's start bar
            self.obs = self.env.reset()
        self.obs = collect(self.model, self.env, self.obs, self.buf, self.goals, self._act)
        self.model.train()
        b, p = self.buf, self.ppo
        self.last_train_returns = b.net_return  # per-bar net returns of this rollout (the curriculum's Sharpe)
        self.env_steps += p.batch_size
        self.iterations += 1
        ep_log = self._episode_log_returns(b)
        fault = _first_nonfinite(
            ("observations", b.market),
            ("rewards", b.rewards),
            ("values", b.values),
            ("next values", b.next_values),
            ("log-probabilities", b.logprobs),
        )
        if self.trainer.world_size > 1:  # DDP: every rank skips together, or the others would wait in all-reduce
            anywhere = float(self._across_ranks(torch.tensor(float(bool(fault)), device=self.device))) > 0
            fault = fault or ("values on another rank" if anywhere else None)
        if fault:
            self._fault(f"non-finite {fault} in the rollout")
            return
        rewards = b.rewards * p.reward_scale  # value targets in log-percent, not ~1e-3 (reports use the ledger)
        extra: dict[str, torch.Tensor] = {}
        if isinstance(self.env, AugmentedEnv):  # what the latest generation of training paths got
            extra.update({f"augment/{k}": v for k, v in self.env.stats.items()})
        if self.goals is not None:
            rewards = rewards + b.her["goal_reward"]
            extra["her/goal_reward_mean"] = b.her["goal_reward"].mean()
            extra["her/goal_reached_frac"] = (b.her["goal_reward"] > 0).float().mean()
        next_obs = None
        if self.icm is not None:
            next_obs = self.env.observe(b.final_t.reshape(-1), b.final_position.reshape(-1))
            o = b.flat_obs()
            r_int = self.icm.intrinsic_reward(Obs(o.market, o.position), b.actions.reshape(-1), next_obs)
            weight = self.icm.weight_at(self.iterations - 1)
            rewards = rewards + weight * r_int.view_as(rewards)
            extra["curiosity/intrinsic_reward_mean"] = r_int.mean()
            extra["curiosity/intrinsic_reward_std"] = r_int.std()
            extra["curiosity/weight"] = torch.tensor(weight)
        if self.grpo:
            adv, ret, alive = self._grpo_advantages(b, rewards, extra)
            t1 = time.perf_counter()
            stats = self._update_grpo(b, adv, alive, next_obs)
        else:
            adv, ret = compute_gae(rewards, b.values, b.next_values, b.terminated, b.dones, p.gamma, p.gae_lambda)
            if self.replay is not None:
                self._store(b, rewards, extra)
            t1 = time.perf_counter()
            stats = self._update(b, adv.reshape(-1), ret.reshape(-1), next_obs)
        t2 = time.perf_counter()
        if "fault" in stats:
            self._fault(stats["fault"])
            return
        self._check_weights("after the update")
        self.faults["consecutive"] = 0
        done_eq = torch.exp(ep_log[b.dones]) if bool(b.dones.any()) else None  # one sync per rollout
        stats.update(extra)
        self._log_train(b, adv, ret, stats, done_eq, rollout_s=t1 - t0, update_s=t2 - t1)

    # ---- PPO (+ ICM, + self-imitation replay) ----
    def _update(
        self, b: Rollout, adv: torch.Tensor, ret: torch.Tensor, next_obs: Obs | None
    ) -> dict[str, torch.Tensor]:
        p, obs = self.ppo, b.flat_obs()
        actions, old_logp, old_v = b.actions.reshape(-1), b.logprobs.reshape(-1), b.values.reshape(-1)
        acc: dict[str, list[torch.Tensor]] = {}
        for _ in range(p.update_epochs):
            perm = torch.randperm(p.batch_size, device=self.device)
            for mb in perm.split(p.minibatch_size):
                batch = (_take(obs, mb), actions[mb], old_logp[mb], adv[mb], old_v[mb], ret[mb])
                replayed, given = None, None
                if self._fuses_update():  # one compiled call: loss, gradients (torch.func), clipped
                    with torch.no_grad():  # torch.func.grad still differentiates; the graph needs no autograd
                        loss, terms, grads, gnorm = self._ppo_grads(self._named_parameters(), *batch)
                    given = (grads, gnorm)
                else:
                    loss, terms = self._ppo_loss(*batch)
                    loss = loss + self._aux_losses(obs, actions, next_obs, mb, terms)
                    replayed = self._sil_term(terms)
                    if replayed is not None:
                        loss = loss + replayed[0]
                fault = self._step(loss, terms, given)
                if fault:
                    return fault
                if replayed is not None:
                    self.replay.update_priorities(replayed[1], replayed[2])
                for k, val in terms.items():
                    acc.setdefault(k, []).append(val.detach())
            if p.target_kl is not None and float(self._across_ranks(terms["approx_kl"])) > p.target_kl:
                break  # CleanRL: stop the epochs once the policy moved too far
        return {k: torch.stack(v).mean() for k, v in acc.items()}

    def _ppo_loss_eager(
        self,
        obs: Obs,
        actions: torch.Tensor,
        old_logp: torch.Tensor,
        adv: torch.Tensor,
        old_v: torch.Tensor,
        ret: torch.Tensor,
        params: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO's loss on one minibatch and its logged terms (``compile=true`` runs this through torch.compile);
        ``params``: the model's parameters by name, to call it functionally (:meth:`_ppo_grads_eager`)."""
        p = self.ppo
        dist, v = self.model(obs) if params is None else torch.func.functional_call(self.model, params, (obs,))
        pg, diag = policy_loss(
            dist.log_prob(actions), old_logp, normalize_advantages(adv) if p.norm_adv else adv, p.clip_coef
        )
        terms = {}
        if isinstance(self.model, Ensemble):  # each member's critic on the returns; members pushed apart
            vl = torch.stack([value_loss(vi, old_v, ret, None) for vi in dist.member_values]).mean()
            div = dist.disagreement().mean()
            terms["ensemble/disagreement"] = div
            diversity_term = -self.ensemble.diversity * div
        else:
            vl = value_loss(v, old_v, ret, p.clip_coef if p.clip_vloss else None)
            diversity_term = 0.0
        ent = dist.entropy().mean()
        terms.update({"policy_loss": pg, "value_loss": vl, "entropy": ent, **diag})
        return pg + p.vf_coef * vl - p.ent_coef * ent + diversity_term, terms

    def _across_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over DDP ranks (``x`` itself on one process): decisions every rank must share."""
        if self.trainer.world_size == 1:
            return x
        return self.trainer.strategy.reduce(x.detach().clone(), reduce_op="mean")

    def _trained_parameters(self) -> list[nn.Parameter]:
        if self._params is None:  # fixed once built (loading a checkpoint copies into the same tensors)
            self._params = list(self.model.parameters()) + ([] if self.icm is None else list(self.icm.parameters()))
        return self._params

    def _ppo_grads_eager(
        self, params: dict[str, torch.Tensor], *batch: torch.Tensor | Obs
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """PPO's minibatch loss, its terms, the gradients of ``params`` clipped to ``algo.max_grad_norm`` and their
        norm before clipping, as one pure function (``torch.func.grad``): with ``compile=true`` the forward, the
        backward and the clip become one graph, with no autograd engine, runtime wrappers or in-place clip between.
        """

        def loss_of(named: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple]:
            loss, terms = self._ppo_loss_eager(*batch, params=named)
            return loss, (loss, terms)

        grads, (loss, terms) = torch.func.grad(loss_of, has_aux=True)(params)
        return loss, terms, *clipped(list(grads.values()), self.ppo.max_grad_norm)

    def _fuses_update(self) -> bool:
        """``compile=true`` with plain PPO on one process: :meth:`_ppo_grads` gives the gradients. Curiosity and
        replay add losses outside PPO's, an ensemble batches its members itself, and DDP all-reduces in backward:
        those take the compiled loss and autograd."""
        if self._ppo_grads is None or self.icm is not None or self.replay is not None:
            return False
        return not isinstance(self.model, Ensemble) and self.trainer.world_size == 1

    def _named_parameters(self) -> dict[str, nn.Parameter]:
        """The model's parameters by name, in :meth:`_trained_parameters`' order (no ICM: see :meth:`_fuses_update`)."""
        if self._named is None:
            names = (n for n, _ in self.model.named_parameters())
            self._named = dict(zip(names, self._trained_parameters(), strict=True))
        return self._named

    def _step(
        self, loss: torch.Tensor, terms: dict, given: tuple[list[torch.Tensor], torch.Tensor] | None = None
    ) -> dict | None:
        """Backward, clip, step optimizer and schedule; a fault dict instead when anything is non-finite.
        ``given``: the clipped gradients and their norm before clipping, already computed (:meth:`_ppo_grads_eager`).
        """
        opt, sched = self.optimizers(), self.lr_schedulers()
        if given is None:
            grads = None
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            gnorm = clip_grad_norm_(self._trained_parameters(), self.ppo.max_grad_norm)
        else:
            grads, gnorm = given
        if not bool(torch.isfinite(loss) & torch.isfinite(gnorm)):  # one host sync per minibatch
            bad = _first_nonfinite(("loss", loss), ("gradients", gnorm))
            opt.zero_grad(set_to_none=True)
            return {"fault": f"non-finite {bad} at gradient step {self.global_step}"}
        if grads is not None:
            for w, g in zip(self._trained_parameters(), grads, strict=True):
                w.grad = g
        opt.step()
        sched.step()
        terms["loss"], terms["grad_norm"] = loss, gnorm
        return None

    def _aux_losses(self, obs: Obs, actions: torch.Tensor, next_obs: Obs | None, mb: torch.Tensor, terms: dict):
        """The ICM loss on this minibatch (0 without curiosity)."""
        if self.icm is None:
            return 0.0
        icm = self.icm.losses(Obs(obs.market[mb], obs.position[mb]), actions[mb], _take(next_obs, mb))
        terms.update(icm_forward_loss=icm["forward_loss"], icm_inverse_loss=icm["inverse_loss"])
        return icm["loss"]

    def _sil_term(self, terms: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Self-imitation loss on a replay batch: (weighted loss, indices, new gaps), or None."""
        rb, rc = self.replay, self.replay_cfg
        if rb is None or rb.size < rc.batch_size:
            return None
        beta = annealed_beta(rc.beta0, self.global_step / max(self.trainer.max_steps, 1))
        idx, w = rb.sample(rc.batch_size, beta)
        o, a, r = rb.get(idx)
        dist, v = self.model(o)
        loss, gap, stats = sil_loss(dist.log_prob(a), v, r, w, rc.value_coef)
        terms.update(stats)
        terms["sil_is_weight_mean"] = w.mean()
        return rc.coef * loss, idx, gap

    def _store(self, b: Rollout, rewards: torch.Tensor, logs: dict) -> None:
        """Put this rollout into the replay buffer with its returns (GAE with lambda = 1:
        discounted to the rollout's end, bootstrapped where it cut an episode); with HER, only
        transitions whose goal window closed inside the rollout, each with ``her_k`` relabels."""
        p, rc = self.ppo, self.replay_cfg
        _, ret = compute_gae(rewards, b.values, b.next_values, b.terminated, b.dones, p.gamma, 1.0)
        obs = b.flat_obs()
        if self.goals is None:
            self.replay.add(obs, b.actions.reshape(-1), ret.reshape(-1))
        else:
            complete, _, feats, ret_k = relabel_future(b.her, ret, rc, p.gamma, p.reward_scale)
            keep = complete.reshape(-1).nonzero(as_tuple=True)[0]  # one host sync per rollout
            m, pos, a = obs.market[keep], obs.position[keep], b.actions.reshape(-1)[keep]
            k = rc.her_k
            market = torch.cat([m, m.repeat(k, 1, 1)])
            position = torch.cat([pos, pos.repeat(k, 1)])
            goal = torch.cat([obs.goal[keep], feats.reshape(k, -1, 2)[:, keep].reshape(-1, 2)])
            returns = torch.cat([ret.reshape(-1)[keep], ret_k.reshape(k, -1)[:, keep].reshape(-1)])
            self.replay.add(Obs(market, position, goal), a.repeat(k + 1), returns)
            logs["her/stored"] = torch.tensor(float(returns.numel()))
            logs["her/relabel_return_gain"] = (ret_k.reshape(k, -1)[:, keep] - ret.reshape(-1)[keep]).mean()
        logs["replay/size"] = torch.tensor(float(self.replay.size))
        if self.replay.tree is not None:
            leaves = self.replay.tree.leaves(self.replay.size)
            logs["replay/priority_mean"] = leaves.mean().float()
            logs["replay/beta"] = torch.tensor(
                annealed_beta(rc.beta0, self.global_step / max(self.trainer.max_steps, 1))
            )

    # ---- GRPO ----
    def _grpo_advantages(self, b: Rollout, rewards: torch.Tensor, logs: dict):
        """Group-relative advantage of each trajectory's total reward, broadcast over its steps.

        A member that went bankrupt is out from the step after: its later steps are masked.
        """
        alive = torch.ones_like(b.terminated)
        alive[1:] = ~(b.terminated[:-1].cumsum(0).bool())
        returns = (rewards * alive).sum(0)  # (N,)
        adv_traj = group_advantages(returns, self.ppo.group_size)
        g = returns.view(-1, self.ppo.group_size)
        logs["grpo/return_mean"] = returns.mean()
        logs["grpo/within_group_std"] = g.std(dim=1, unbiased=False).mean()
        logs["grpo/between_group_std"] = g.mean(dim=1).std(unbiased=False)
        return adv_traj.expand_as(rewards), returns.expand_as(rewards), alive

    def _update_grpo(self, b: Rollout, adv: torch.Tensor, alive: torch.Tensor, next_obs: Obs | None) -> dict:
        p, obs = self.ppo, b.flat_obs()
        actions, old_logp = b.actions.reshape(-1), b.logprobs.reshape(-1)
        adv, mask = adv.reshape(-1), alive.reshape(-1)
        acc: dict[str, list[torch.Tensor]] = {}
        for _ in range(p.update_epochs):
            perm = torch.randperm(p.batch_size, device=self.device)
            for mb in perm.split(p.minibatch_size):
                dist, _ = self.model(_take(obs, mb))
                logp = dist.log_prob(actions[mb])
                # the reference is the previous iteration's policy: the one that sampled the groups
                pg_kl, terms = grpo_loss(logp, old_logp[mb], old_logp[mb], adv[mb], p.clip_coef, p.kl_coef, mask[mb])
                ent = dist.entropy().mean()
                terms["entropy"] = ent
                loss = pg_kl - p.ent_coef * ent + self._aux_losses(obs, actions, next_obs, mb, terms)
                fault = self._step(loss, terms)
                if fault:
                    return fault
                for k, val in terms.items():
                    acc.setdefault(k, []).append(val.detach())
        return {k: torch.stack(v).mean() for k, v in acc.items()}

    def _fault(self, what: str) -> None:
        """Skip this iteration's (remaining) update; stop after ``faults.max_consecutive`` in a row."""
        self.faults["consecutive"] += 1
        self.faults["total"] += 1
        self.log_dict(
            {
                "faults/skipped_updates": float(self.faults["total"]),
                "faults/consecutive": float(self.faults["consecutive"]),
            },
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        print(f"numerical fault: {what}; update skipped ({self.faults['consecutive']} in a row)", flush=True)
        if self.faults["consecutive"] >= self.max_faults:
            raise NumericalFault(
                f"stopping: {self.faults['consecutive']} consecutive numerical faults (faults.max_consecutive="
                f"{self.max_faults}); last: {what}"
            )

    def _check_weights(self, when: str) -> None:
        named = list(self.model.named_parameters())
        if self.icm is not None:
            named += [(f"icm.{n}", w) for n, w in self.icm.named_parameters()]
        ok = torch.stack([torch.isfinite(w).all() for _, w in named])
        if bool(ok.all()):  # one host sync
            return
        names = ", ".join(n for (n, _), good in zip(named, ok.tolist(), strict=True) if not good)
        raise NumericalFault(f"stopping: non-finite weights {when} at step {self.global_step} ({names})")

    def _episode_log_returns(self, b: Rollout) -> torch.Tensor:
        """Log growth of each episode that ended inside this rollout, at its end step (else 0)."""
        run = torch.zeros_like(b.rewards[0]) if self._ep_acc is None else self._ep_acc
        out = torch.zeros_like(b.rewards)
        for t in range(b.rewards.shape[0]):
            run = run + b.rewards[t]
            out[t] = run
            run = run * (~b.dones[t])
        self._ep_acc = run
        return out

    def _log_train(self, b: Rollout, adv, ret, stats, done_eq, rollout_s: float, update_s: float) -> None:
        groups = self.optimizers().param_groups
        logs = {(k if "/" in k else f"losses/{k}"): v for k, v in stats.items()}
        logs.update({f"charts/learning_rate_{g['optimizer']}": g["lr"] for g in groups if "optimizer" in g})
        if not self.grpo:  # GRPO trains no critic
            logs["losses/explained_variance"] = explained_variance(b.values.flatten(), ret.flatten())
        logs.update(
            {
                "charts/learning_rate": groups[0]["lr"],
                "charts/env_steps": float(self.env_steps),
                "charts/sps": b.actions.numel() / max(rollout_s + update_s, 1e-9),
                "charts/rollout_sps": b.actions.numel() / max(rollout_s, 1e-9),
                "train/reward_mean": b.rewards.mean(),
                "train/position_abs_mean": b.actions.abs().mean(),
                "train/turnover_mean": b.turnover.mean(),
            }
        )
        if done_eq is not None:
            logs["train/episode_return"] = (done_eq - 1).mean()
            logs["train/episode_final_equity"] = done_eq.mean()
        # under DDP each rank trained on its own episodes: logged figures are means over ranks
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=1, sync_dist=self.trainer.world_size > 1)
        self.log("sps", logs["charts/sps"], prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)
        tb = self._tb()
        if tb is not None and self.trainer.fit_loop.epoch_loop._batches_that_stepped % 10 == 0:
            tb.add_histogram("charts/positions", b.actions.flatten(), self.global_step)
            tb.add_histogram("charts/advantages", adv.flatten(), self.global_step)

    def _tb(self):
        from lightning.pytorch.loggers import TensorBoardLogger

        return self.logger.experiment if isinstance(self.logger, TensorBoardLogger) else None


def _first_nonfinite(*named: tuple[str, torch.Tensor]) -> str | None:
    """Name of the first tensor holding a NaN or inf, else None (one host sync in the common case)."""
    ok = torch.stack([torch.isfinite(x).all() for _, x in named])
    if bool(ok.all()):
        return None
    return next(name for (name, _), good in zip(named, ok.tolist(), strict=True) if not good)


def _take(obs: Obs | None, idx: torch.Tensor) -> Obs | None:
    """Rows ``idx`` of a flat observation batch (goal features included)."""
    if obs is None:
        return None
    goal = None if obs.goal is None else obs.goal.index_select(0, idx)
    return Obs(obs.market.index_select(0, idx), obs.position.index_select(0, idx), goal)  # a quarter of x[idx]'s cost
