"""The LightningModule: it orchestrates one training iteration and the evaluation.

An iteration (``training_step``) is: rollout from the vectorised env -> rewards (the add-ons may transform
them) -> targets (the update rule's advantages and value targets) -> the update (minibatch steps of the rule's
loss plus every add-on's term) -> log. The pieces are small objects with one interface (:mod:`src.rl.addons`):
the update rule from ``algo`` (:class:`src.rl.ppo.PPO`, :class:`src.rl.grpo.GRPO`) and the add-ons from
``curiosity`` (:mod:`src.rl.rnd`), ``replay`` (:mod:`src.rl.sil`, :mod:`src.rl.her`) and ``ensemble``
(:mod:`src.models.ensemble`); this module holds no algorithm of its own.

Manual optimisation: the epochs and minibatches are looped explicitly in ``training_step`` and every
``optimizer.step()`` counts as one Lightning global step, so ``trainer.max_steps`` is a budget of gradient
updates. Validation walks the validation split deterministically; test walks the test split once at the end
of the run, with the selected (best) weights (:mod:`src.training.eval_hooks`); what checkpoints carry besides the
weights is in :mod:`src.training.state`.
"""

from __future__ import annotations

import time
from functools import partial

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from src.core.errors import ConfigError
from src.core.utils import build, compile_static
from src.data.augment import Augmenter
from src.data.market import Market
from src.envs.augmented_env import AugmentedEnv
from src.envs.market_env import MarketEnv, Obs
from src.evaluation.walk import EvalResult
from src.models.ensemble import EnsembleConfig
from src.optim.schedules import lr_multiplier
from src.rl.addons import AddOn, Batch, Iteration
from src.rl.rollout import Rollout, act, collect
from src.training.eval_hooks import EvaluationHooks
from src.training.state import CheckpointHooks
from src.training.step import StepHooks, first_nonfinite


class _Forever(IterableDataset):
    """Training 'batches' are just ticks: the data comes from the env."""

    def __iter__(self):
        while True:
            yield 0


class _Joint(nn.Module):
    """The policy and the add-ons' trained modules as one module for the optimizer factories (``encoder``
    exposed, so Muon still finds the transformer's hidden matrices; shared parameters are listed once)."""

    def __init__(self, model: nn.Module, extras: list[nn.Module]) -> None:
        super().__init__()
        if hasattr(model, "encoder"):
            self.encoder = model.encoder
        self.policy, self.extras = model, nn.ModuleList(extras)

    def muon_matrices(self) -> list[nn.Parameter]:
        from src.optim.muon import hidden_matrices

        return hidden_matrices(self.policy)[0]


class PPOModule(EvaluationHooks, CheckpointHooks, StepHooks, L.LightningModule):
    """Actor-critic + an update rule (PPO or GRPO) + add-ons, on a :class:`Market`.

    Args:
        cfg: the resolved run configuration (a plain dict; saved in every checkpoint).
        market: the data; not a hyper-parameter, passed again when loading a checkpoint.
    """

    def __init__(self, cfg: dict, market: Market) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["market"])
        self.automatic_optimization = False
        self.cfg = OmegaConf.create(cfg)
        self.market = market
        if float(self.cfg.model.get("dropout", 0.0) or 0.0) > 0:
            raise ConfigError(
                "model.dropout must be 0 for RL: the rollout acts without dropout and the update would compare "
                "its log-probabilities with a different random network (an off-policy ratio)"
            )
        self.ppo = build(self.cfg.algo)  # the rule's settings (callbacks read and adjust them)
        lo, hi = (float(x) for x in market.position_limits)
        optional = {k: self.cfg.get(k) for k in ("curiosity", "replay")}
        self.curiosity = (
            build(
                optional["curiosity"],
                num_features=market.num_features,
                window=market.window,
                position_limits=(lo, hi),
            )
            if optional["curiosity"]
            else None
        )
        self.replay: AddOn | None = build(optional["replay"]) if optional["replay"] else None
        goal_dim = 0 if self.replay is None else self.replay.goal_dim
        shape = {"num_features": market.num_features, "window": market.window, "action_range": (lo, hi)}
        if goal_dim:
            shape["goal_dim"] = goal_dim
        ens: EnsembleConfig = build(self.cfg.ensemble) if self.cfg.get("ensemble") else EnsembleConfig()
        if goal_dim and ens.size > 1:
            raise ConfigError("replay=her with an ensemble is not supported: use one goal-conditioned model")
        self.model, ens_addons = self._build_policy(ens, shape)
        self.rule = self.ppo.rule(self.model)
        self.grpo = self.rule.grouped_episodes
        if self.grpo and ens.size > 1:
            raise ConfigError(
                "algo=grpo with an ensemble is not supported: a group's trajectories would be acted by different "
                "members, and the group-relative advantage would rank members, not actions"
            )
        self.addons: list[AddOn] = [a for a in (self.curiosity, self.replay) if a is not None] + ens_addons
        for a in self.addons:
            if a.needs_critic and not self.rule.has_critic:
                raise ConfigError(f"{type(a).__name__} needs a critic (it compares returns with V); algo has none")
        self.augmenter: Augmenter | None = build(self.cfg.augmentation) if self.cfg.get("augmentation") else None
        self.switched_augmentation: dict | None = None  # set when a target run switched augmentation on
        self._saved_extra: dict | None = None
        self.iterations = 0
        self.env: MarketEnv | None = None
        self.obs: Obs | None = None
        self.buf: Rollout | None = None
        self.trackers: dict = {}
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
        # compile=true: the rule's minibatch loss (forward, losses and, through AOTAutograd, their backward) as
        # fused kernels; a one-off compile of ~30 s, then fewer per-op costs (what bounds small models on a CPU).
        # PPO with no add-ons on one process goes further: loss, gradients and their clipping as one graph.
        compiled = bool(self.cfg.get("compile")) and self.rule.fusable
        self._loss = compile_static(self._loss_eager) if compiled else self._loss_eager
        self._grads = compile_static(self._grads_eager) if compiled else None
        # ... and the behaviour policy's step in the rollout (an ensemble's batched members stay eager)
        plain = compiled and not ens_addons
        self._act = compile_static(partial(act, self.model)) if plain else None

    def _build_policy(self, ens: EnsembleConfig, shape: dict) -> tuple[nn.Module, list[AddOn]]:
        """The trained policy and its add-ons (a population overrides this: :mod:`src.training.population`)."""
        return ens.build(lambda: build(self.cfg.model, **shape))

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
            for a in self.addons:
                a.setup(self)
            self.trackers = {t.kind: t for a in self.addons if (t := a.tracker()) is not None}
            if self._saved_env is not None:  # resuming a fit from a checkpoint: continue the same episodes
                self._restore_env(self._saved_env)
            if self._saved_extra is not None:
                self._restore_extra(self._saved_extra)
            self.buf = Rollout.allocate(
                self.ppo.rollout_steps, self.env, "goals" in self.trackers, "members" in self.trackers
            )

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
        if self.augmenter is not None or "goals" in self.trackers:
            return False
        self.augmenter = build(OmegaConf.create(node))
        self.switched_augmentation = dict(node)
        self.env = self._train_env(self.env.gen)
        self.obs = self.env.reset()
        if self._ep_acc is not None:
            self._ep_acc.zero_()
        for a in self.addons:
            a.episodes_broken()
        return True

    def configure_optimizers(self):
        extras = [m for a in self.addons for m in a.trained_modules()]
        opt = build(self.cfg.optimizer)(_Joint(self.model, extras) if extras else self.model)
        scale = float(self.cfg.get("lr_scale", 1.0))  # one knob for every group's lr, whatever the optimizer
        if scale <= 0:
            raise ConfigError(f"lr_scale must be > 0, got {scale}")
        for g in opt.param_groups:
            g["lr"] *= scale
        fn = partial(
            lr_multiplier, total_steps=self._budget(), **OmegaConf.to_container(self.cfg.scheduler, resolve=True)
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return [opt], [{"scheduler": sched, "interval": "step"}]

    # ---- training ----
    def _budget(self) -> int:
        """Gradient steps in this run (``trainer.max_steps``; 1 outside a trainer)."""
        return self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else 1

    def training_step(self, batch, batch_idx: int) -> None:
        t0 = time.perf_counter()
        p = self.ppo
        it = Iteration(self.buf, self.env, self.iterations, min(self.global_step / self._budget(), 1.0))
        self.rule.begin(self.model, it)
        self.model.eval()  # the behaviour policy (dropout is refused: nothing differs but the bookkeeping)
        if self.grpo:  # every iteration: fresh groups, all members from their group's start bar
            self.obs = self.env.reset()
        goals, members = self.trackers.get("goals"), self.trackers.get("members")
        self.obs = collect(self.model, self.env, self.obs, self.buf, goals, self._act, members)
        self.model.train()
        b = self.buf
        self.last_train_returns = b.net_return  # per-bar net returns of this rollout (the curriculum's Sharpe)
        self.env_steps += self.buf.rewards.numel()  # p.batch_size, times the members of a population
        self.iterations += 1
        ep_log = self._episode_log_returns(b)
        fault = first_nonfinite(
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
            for a in self.addons:  # this rollout's steps are lost: no episode in progress can be completed
                a.episodes_broken()
            self._fault(f"non-finite {fault} in the rollout")
            return
        rewards = b.rewards * p.reward_scale  # value targets in log-percent, not ~1e-3 (reports use the ledger)
        if isinstance(self.env, AugmentedEnv):  # what the latest generation of training paths got
            it.logs.update({f"augment/{k}": v for k, v in self.env.stats.items()})
        for a in self.addons:
            rewards = a.rewards(it, rewards)
        targets = self.rule.targets(it, rewards)
        for a in self.addons:
            a.observe(it, self.rule, targets, rewards)
        t1 = time.perf_counter()
        stats = self._update(targets, it)
        t2 = time.perf_counter()
        if "fault" in stats:
            self._fault(stats["fault"])
            return
        self._check_weights("after the update")
        self.faults["consecutive"] = 0
        done_eq = torch.exp(ep_log[b.dones]) if bool(b.dones.any()) else None  # one sync per rollout
        stats.update(it.logs)
        self._log_train(b, targets, stats, done_eq, rollout_s=t1 - t0, update_s=t2 - t1)

    def _update(self, batch: Batch, it: Iteration) -> dict[str, torch.Tensor]:
        """The rule's epochs of minibatch steps; each add-on adds its term to every minibatch loss."""
        p = self.ppo
        acc: dict[str, list[torch.Tensor]] = {}
        for _ in range(p.update_epochs):
            perm = torch.randperm(batch.size, device=self.device)
            for idx in perm.split(p.minibatch_size):
                mb = batch.take(idx)
                given = None
                if self._fuses_update():  # one compiled call: loss, gradients (torch.func), clipped
                    with torch.no_grad():  # torch.func.grad still differentiates; the graph needs no autograd
                        loss, terms, grads, gnorm = self._grads(self._named_parameters(), *_tensors(mb))
                    given = (grads, gnorm)
                else:
                    loss, terms = self._loss(*_tensors(mb))
                    for a in self.addons:
                        term = a.loss(self.model, mb, idx, it, self.rule, terms)
                        loss = loss if term is None else loss + term
                fault = self._step(loss, terms, given)
                if fault:
                    return fault
                for a in self.addons:
                    a.after_step()
                for k, val in terms.items():
                    acc.setdefault(k, []).append(val.detach())
            target_kl = getattr(p, "target_kl", None)
            if target_kl is not None and float(self._across_ranks(terms["approx_kl"])) > target_kl:
                break  # CleanRL: stop the epochs once the policy moved too far
        return {k: torch.stack(v).mean() for k, v in acc.items()}

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


def _tensors(mb: Batch) -> tuple:
    """A minibatch as the positional arguments of :meth:`PPOModule._loss_eager` (what torch.compile sees)."""
    return (mb.obs, mb.actions, mb.logprobs, mb.values, mb.advantages, mb.returns, mb.mask, mb.ref_logprobs)
