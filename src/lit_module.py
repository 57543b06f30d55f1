"""The LightningModule: one training step = one rollout from the vectorised env + the PPO update.

Manual optimisation: the PPO epochs and minibatches are looped explicitly in
``training_step`` and every ``optimizer.step()`` counts as one Lightning
global step, so ``trainer.max_steps`` is a budget of gradient updates.
Validation walks the validation split deterministically; test walks the test
split once at the end of the run, with the selected (best) weights.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, IterableDataset

from src.checkpoint import rng_state, set_rng_state
from src.data.market import Market
from src.envs.market_env import MarketEnv, Obs
from src.errors import ConfigError, NumericalFault
from src.evaluation import EvalResult, evaluate_split, model_policy
from src.optim.schedules import lr_multiplier
from src.rl.gae import compute_gae, discounted_returns
from src.rl.ppo import PPOConfig, explained_variance, normalize_advantages, policy_loss, value_loss
from src.rl.rollout import Rollout, collect
from src.utils import build


class _Forever(IterableDataset):
    """Training 'batches' are just ticks: the data comes from the env."""

    def __iter__(self):
        while True:
            yield 0


class PPOModule(L.LightningModule):
    """Actor-critic + PPO on a :class:`Market`.

    Args:
        cfg: the resolved run configuration (a plain dict; saved in every checkpoint).
        market: the data; not a hyper-parameter, passed again when loading a checkpoint.
    """

    def __init__(self, cfg: dict, market: Market) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["market"])
        self.automatic_optimization = False
        self.cfg = OmegaConf.create(cfg)
        self.ppo: PPOConfig = build(self.cfg.algo)
        self.market = market
        self.model = build(self.cfg.model, num_features=market.num_features, window=market.window)
        self.env: MarketEnv | None = None
        self.obs: Obs | None = None
        self.buf: Rollout | None = None
        self.env_steps = 0
        self.results: dict[str, dict[str, EvalResult]] = {}
        self._ep_acc: torch.Tensor | None = None  # running log growth of the episodes in progress
        self._saved_env: dict | None = None
        self._saved_rng: dict | None = None
        self.val_history: list[dict] = []
        self.max_faults = int(self.cfg.get("faults", {}).get("max_consecutive", 3))
        if self.max_faults < 1:
            raise ConfigError(f"faults.max_consecutive must be >= 1, got {self.max_faults}")
        self.faults = {"consecutive": 0, "total": 0}

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
            self.env = MarketEnv(self.market, "train", self.ppo.num_envs, random_start=True, generator=gen)
            self.obs = self.env.reset()
            if self._saved_env is not None:  # resuming a fit from a checkpoint: continue the same episodes
                self._restore_env(self._saved_env)
            self.buf = Rollout.allocate(self.ppo.rollout_steps, self.env)

    def configure_optimizers(self):
        opt = build(self.cfg.optimizer)(self.model)
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
        self.obs = collect(self.model, self.env, self.obs, self.buf)
        self.model.train()
        b, p = self.buf, self.ppo
        self.env_steps += p.batch_size
        ep_log = self._episode_log_returns(b)
        fault = _first_nonfinite(
            ("observations", b.market),
            ("rewards", b.rewards),
            ("values", b.values),
            ("next values", b.next_values),
            ("log-probabilities", b.logprobs),
        )
        if fault:
            self._fault(f"non-finite {fault} in the rollout")
            return
        rewards = b.rewards * p.reward_scale  # value targets in log-percent, not ~1e-3 (reports use the ledger)
        adv, ret = compute_gae(rewards, b.values, b.next_values, b.terminated, b.dones, p.gamma, p.gae_lambda)
        t1 = time.perf_counter()
        stats = self._update(b, adv.reshape(-1), ret.reshape(-1))
        t2 = time.perf_counter()
        if "fault" in stats:
            self._fault(stats["fault"])
            return
        self._check_weights("after the update")
        self.faults["consecutive"] = 0
        done_eq = torch.exp(ep_log[b.dones]) if bool(b.dones.any()) else None  # one sync per rollout
        self._log_train(b, adv, ret, stats, done_eq, rollout_s=t1 - t0, update_s=t2 - t1)

    def _update(self, b: Rollout, adv: torch.Tensor, ret: torch.Tensor) -> dict[str, torch.Tensor]:
        opt, sched = self.optimizers(), self.lr_schedulers()
        p, obs = self.ppo, b.flat_obs()
        actions, old_logp, old_v = b.actions.reshape(-1), b.logprobs.reshape(-1), b.values.reshape(-1)
        acc: dict[str, list[torch.Tensor]] = {}
        for _ in range(p.update_epochs):
            perm = torch.randperm(p.batch_size, device=self.device)
            for mb in perm.split(p.minibatch_size):
                dist, v = self.model(Obs(obs.market[mb], obs.position[mb]))
                mb_adv = normalize_advantages(adv[mb]) if p.norm_adv else adv[mb]
                pg, diag = policy_loss(dist.log_prob(actions[mb]), old_logp[mb], mb_adv, p.clip_coef)
                vl = value_loss(v, old_v[mb], ret[mb], p.clip_coef if p.clip_vloss else None)
                ent = dist.entropy().mean()
                loss = pg + p.vf_coef * vl - p.ent_coef * ent
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), p.max_grad_norm)
                bad = _first_nonfinite(("loss", loss), ("gradients", gnorm))  # one host sync per minibatch
                if bad:
                    opt.zero_grad(set_to_none=True)
                    return {"fault": f"non-finite {bad} at gradient step {self.global_step}"}
                opt.step()
                sched.step()
                for k, val in (
                    ("policy_loss", pg),
                    ("value_loss", vl),
                    ("entropy", ent),
                    ("loss", loss),
                    ("grad_norm", gnorm),
                    *diag.items(),
                ):
                    acc.setdefault(k, []).append(val.detach())
            if p.target_kl is not None and float(diag["approx_kl"]) > p.target_kl:
                break  # CleanRL: stop the epochs once the policy moved too far
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
        logs = {f"losses/{k}": v for k, v in stats.items()}
        logs.update({f"charts/learning_rate_{g['optimizer']}": g["lr"] for g in groups if "optimizer" in g})
        logs.update(
            {
                "losses/explained_variance": explained_variance(b.values.flatten(), ret.flatten()),
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
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=1)
        self.log("sps", logs["charts/sps"], prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)
        tb = self._tb()
        if tb is not None and self.trainer.fit_loop.epoch_loop._batches_that_stepped % 10 == 0:
            tb.add_histogram("charts/positions", b.actions.flatten(), self.global_step)
            tb.add_histogram("charts/advantages", adv.flatten(), self.global_step)

    def _tb(self):
        from lightning.pytorch.loggers import TensorBoardLogger

        return self.logger.experiment if isinstance(self.logger, TensorBoardLogger) else None

    # ---- evaluation ----
    def _evaluate(self, split: str, values: list[torch.Tensor] | None = None) -> dict[str, EvalResult]:
        self.model.eval()
        res = evaluate_split(self.market, split, model_policy(self.model, values))
        self.results[split] = res
        return res

    def validation_step(self, batch, batch_idx: int) -> None:
        self._check_weights("before validation")
        values: list[torch.Tensor] = []
        res = self._evaluate("val", values)
        self._log_eval("val", res)
        vloss = self._value_loss(values, res["agent"].ledger["net_return"])
        self.log("val/value_loss", vloss, batch_size=1)
        if self.trainer.state.fn == "fit":
            self._record_val_history(res["agent"].metrics, vloss)

    def _value_loss(self, values: list[torch.Tensor], net_returns) -> float:
        """Validation loss: the critic's squared error against the discounted return actually earned
        along the deterministic validation path (rewards as in training; the last value bootstraps)."""
        v = torch.stack(values).double().cpu()
        r = torch.log1p(torch.tensor(net_returns.to_numpy(), dtype=torch.float64)) * self.ppo.reward_scale
        g = discounted_returns(r, self.ppo.gamma, bootstrap=v[-1])
        return float(((v - g) ** 2).mean())

    def _record_val_history(self, m: dict, value_loss: float) -> None:
        """``val_history.csv`` in the run directory: one row per validation, for learning curves."""
        from src.reporting import atomic_write

        self.val_history.append(
            {
                "gradient_steps": self.global_step,
                "env_steps": self.env_steps,
                **{k: m[k] for k in ("sharpe", "total_return", "max_drawdown", "exposure")},
                "value_loss": value_loss,
            }
        )
        if self.trainer.is_global_zero:
            rows = [",".join(self.val_history[0])] + [
                ",".join(f"{v:.10g}" for v in r.values()) for r in self.val_history
            ]
            atomic_write(Path(self.trainer.default_root_dir) / "val_history.csv", "\n".join(rows) + "\n")

    def test_step(self, batch, batch_idx: int) -> None:
        self._log_eval("best_val", self._evaluate("val"))  # the selected model's validation figures
        self._log_eval("test", self._evaluate("test"))  # evaluated once, after selection

    def _log_eval(self, prefix: str, res: dict[str, EvalResult]) -> None:
        m = res["agent"].metrics
        keys = ("total_return", "max_drawdown", "win_rate", "trades", "final_equity", "sortino", "turnover")
        self.log_dict({f"{prefix}/{k}": float(m[k]) for k in keys}, batch_size=1, prog_bar=False)
        self.log(f"{prefix}/sharpe", float(m["sharpe"]), batch_size=1, prog_bar=True)
        self.log(f"{prefix}/bh_sharpe", float(res["buy_and_hold"].metrics["sharpe"]), batch_size=1)
        tb = self._tb()
        if tb is not None:
            from src.reporting import equity_figure

            tb.add_figure(
                f"{prefix}/equity_curve", equity_figure(res, f"{self.market.name} {prefix}"), self.global_step
            )

    # ---- checkpoint: env, RNG, fault counters and history travel with the weights ----
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._check_weights("at a checkpoint")  # a NaN model is never saved, as best or as last
        checkpoint["tradelab"] = {
            "env_steps": self.env_steps,
            "market": self.market.describe(),
            "rng": rng_state(),
            "faults": dict(self.faults),
            "val_history": [dict(r) for r in self.val_history],
            "episode_log_growth": None if self._ep_acc is None else self._ep_acc.cpu(),
        }
        if self.env is not None:
            e = self.env
            checkpoint["tradelab"]["env"] = {
                "t": e.t.cpu(),
                "steps": e.steps.cpu(),
                "position": e.position.cpu(),
                "equity": e.equity.cpu(),
                "generator": e.gen.get_state(),
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("tradelab", {})
        saved_hash = state.get("market", {}).get("sha256")
        if saved_hash is not None and saved_hash != self.market.data_hash:
            raise ConfigError(
                f"the checkpoint was trained on data with SHA-256 {saved_hash[:12]}..., but {self.market.source} "
                f"now has {self.market.data_hash[:12]}...: the data changed; start a new run"
            )
        self.env_steps = int(state.get("env_steps", 0))
        self.faults = dict(state.get("faults", self.faults))
        self.val_history = [dict(r) for r in state.get("val_history", [])]
        acc = state.get("episode_log_growth")
        self._ep_acc = None if acc is None else acc.to(self.device)
        self._saved_rng = state.get("rng")
        self._saved_env = state.get("env")
        if self.env is not None and self._saved_env is not None:
            self._restore_env(self._saved_env)

    def on_train_start(self) -> None:
        # after Lightning's restore and loop set-up: the next draw is the one the interrupted run made next
        if self._saved_rng is not None:
            set_rng_state(self._saved_rng)
            self._saved_rng = None

    def _restore_env(self, saved: dict) -> None:
        e = self.env
        if saved["t"].shape != e.t.shape:
            raise ConfigError(f"the checkpoint has {saved['t'].numel()} envs, algo.num_envs is {e.n}")
        for name in ("t", "steps", "position", "equity"):
            getattr(e, name).copy_(saved[name].to(self.device))
        e.gen.set_state(saved["generator"])
        self.obs = e.observe(e.t, e.position)


def _first_nonfinite(*named: tuple[str, torch.Tensor]) -> str | None:
    """Name of the first tensor holding a NaN or inf, else None (one host sync in the common case)."""
    ok = torch.stack([torch.isfinite(x).all() for _, x in named])
    if bool(ok.all()):
        return None
    return next(name for (name, _), good in zip(named, ok.tolist(), strict=True) if not good)
