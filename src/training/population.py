"""``population=K``: the LightningModule that trains K independent PPO agents as one batched model.

:class:`PopulationModule` is :class:`src.training.module.PPOModule` with the member dimension added where the run's
state is per agent (:mod:`src.models.population` has the design): the policy (stacked weights), the env (each member's
own episodes), the rule (:class:`PopulationPPO`: each member's own value normalisation, advantages and
minibatches), the gradient step (each member's own loss, clipped by its own norm) and the selection (each
member's own best validation Sharpe). Iterations, validations and the learning-rate schedule are shared: they
are the same for every member's own run.

Supported: ``algo=ppo`` with ``optimizer=adamw|sgd|muon``, any model, env, scheduler and callbacks; the add-ons
(curiosity, replay, augmentation, curriculum, ensembles, the profitability target), ``algo.target_kl``,
``compile=true`` and DDP are refused with the reason. A numerical fault in any member skips that gradient step
for all (a fault is a bug to fix, not a regime to train through).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import vmap

from src.core.utils import build
from src.envs.market_env import Obs
from src.envs.population import PopulationEnv
from src.evaluation.walk import EvalResult, evaluate_split
from src.models.ensemble import EnsembleConfig
from src.models.population import Population, PopulationPolicy
from src.optim.clip import clip_scale
from src.rl.addons import AddOn, Batch, Iteration
from src.rl.population import MemberStreams, PopulationBatch, PopulationPPO, member_seeds
from src.training.module import PPOModule
from src.training.step import first_nonfinite


class PopulationModule(PPOModule):
    """See the module docstring. ``cfg.population`` members, seeds ``cfg.seed`` + 0 .. K - 1."""

    def __init__(self, cfg: dict, market) -> None:
        super().__init__(cfg, market)
        self.rule = PopulationPPO(self.ppo, self.model.size)
        self.chunk = int(self.cfg.get("population_chunk") or 0)  # members per forward/backward of an update
        self.member_val_history: list[list[float]] = []

    @property
    def seeds(self) -> list[int]:
        return member_seeds(int(self.cfg.seed), int(self.cfg.population))

    def _build_policy(self, ens: EnsembleConfig, shape: dict) -> tuple[nn.Module, list[AddOn]]:
        keep, members, states = torch.get_rng_state(), [], []
        for s in self.seeds:  # each member as its own run builds it, and the stream its run continues with
            torch.manual_seed(s)
            members.append(build(self.cfg.model, **shape))
            states.append(torch.get_rng_state())
        torch.set_rng_state(keep)
        return Population(members, MemberStreams(states, "cpu")), []

    def setup(self, stage: str) -> None:
        if self.device.type == "cuda" and self.model.streams.device.type != "cuda":  # sampling draws on the GPU
            self.model.streams = MemberStreams.seeded(self.seeds, self.device)
        super().setup(stage)

    def _train_env(self, gen: torch.Generator) -> PopulationEnv:
        gens = []
        for s in self.seeds:  # each member's env generator, seeded as its own run seeds it
            g = torch.Generator(device=self.device)
            g.manual_seed(s * 1000 + self.global_rank)
            gens.append(g)
        return PopulationEnv(self.market, self.ppo.num_envs, gens, compile=bool(self.cfg.get("compile")))

    # ---- the update ----
    def _member_loss(self, params: dict, market, position, actions, logprobs, values, advantages, returns):
        mb = Batch(Obs(market, position), actions, logprobs, values, advantages, returns)
        return self.rule.rules[0].loss(self.model.template, mb, params)

    def _update(self, batch: PopulationBatch, it: Iteration) -> dict[str, torch.Tensor]:
        p, k = self.ppo, self.model.size
        acc: dict[str, list[torch.Tensor]] = {}
        for _ in range(p.update_epochs):
            perms = torch.stack([self.model.streams.randperm(j, batch.size) for j in range(k)])
            for idx in perms.split(p.minibatch_size, dim=1):
                losses, terms = self._member_losses(batch.take(idx))
                fault = self._member_step(losses, terms)
                if fault:
                    return fault
                for name, val in terms.items():
                    acc.setdefault(name, []).append(val.detach())
        return {name: torch.stack(v).mean() for name, v in acc.items()}  # means over steps and members

    def _member_losses(self, mb: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        """Every member's loss on its own minibatch, and the backward of their sum (each member's gradient is its
        own loss's), ``population_chunk`` members at a time: the activations of a few members stay in cache, where
        those of all K at once would stream through memory (the same gradients; ``make bench`` measures it)."""
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        k, step = self.model.size, self.chunk or self.model.size
        params = self.model.params()
        out: list[tuple[torch.Tensor, dict]] = []
        for a in range(0, k, step):
            part = {n: w[a : a + step] for n, w in params.items()}
            losses, terms = vmap(self._member_loss)(part, *(x[a : a + step] for x in mb))
            self.manual_backward(losses.sum())
            out.append((losses.detach(), terms))
        losses = torch.cat([x for x, _ in out])
        return losses, {n: torch.cat([t[n] for _, t in out]) for n in out[0][1]}

    def _member_step(self, losses: torch.Tensor, terms: dict) -> dict | None:
        """Each member's gradients (already computed) clipped by its own norm, then one optimizer step of every
        member."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        grads = [w.grad for w in self.model.params().values()]
        norms = torch.linalg.vector_norm(torch.stack([g.flatten(1).norm(dim=1) for g in grads], 1), dim=1)
        bad = first_nonfinite(("loss", losses), ("gradients", norms))
        if bad:
            opt.zero_grad(set_to_none=True)
            return {"fault": f"non-finite {bad} of a population member at gradient step {self.global_step}"}
        scale = clip_scale(norms, self.ppo.max_grad_norm)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))
        opt.step()
        sched.step()
        terms["loss"], terms["grad_norm"] = losses, norms
        return None

    # ---- selection and test ----
    def _member_results(self, split: str) -> list[dict[str, EvalResult]]:
        self.model.eval()
        res = evaluate_split(self.market, split, PopulationPolicy(self.model))
        base = {n: r for n, r in res.items() if not n.startswith("member_")}
        return [{"agent": res[f"member_{k}"], **base} for k in range(self.model.size)]

    def validation_step(self, batch, batch_idx: int) -> None:
        self._check_weights("before validation")
        per = self._member_results("val")
        sharpes = torch.tensor([r["agent"].metrics["sharpe"] for r in per], dtype=torch.float64)
        self.log_dict({f"val/member_{k}_sharpe": float(s) for k, s in enumerate(sharpes)}, batch_size=1)
        self.log("val/sharpe", float(sharpes.nanmean()), batch_size=1, prog_bar=True)  # the members' mean
        self.log("val/bh_sharpe", float(per[0]["buy_and_hold"].metrics["sharpe"]), batch_size=1)
        if self.trainer.state.fn in ("fit", "validate") and not self.trainer.sanity_checking:
            self.model.keep_best(sharpes, self.global_step)
            self.member_val_history.append(sharpes.tolist())
            keys = ("sharpe", "total_return", "max_drawdown", "exposure")
            mean = {key: sum(r["agent"].metrics[key] for r in per) / len(per) for key in keys}
            self._record_val_history(mean, float("nan"))

    def test_members(self) -> list[dict[str, dict[str, EvalResult]]]:
        """Every member's selected weights on the validation and test splits (each test evaluated once)."""
        with self.model.selected():
            val, test = self._member_results("val"), self._member_results("test")
        return [{"val": v, "test": t} for v, t in zip(val, test, strict=True)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["population"] = {"streams": self.model.streams.state_dict(), "val_history": self.member_val_history}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("population")
        if saved is not None:
            self.model.streams.load_state_dict(saved["streams"])
            self.member_val_history = [list(r) for r in saved["val_history"]]
