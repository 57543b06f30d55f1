"""The LightningModule's checkpoint state: env, RNG, fault counters and history travel with the weights.

A mixin of :class:`src.training.module.PPOModule`; :func:`refuse_changed_data` is the one check that a
checkpoint's data file is the one it was trained on (resume, and re-evaluation by ``src.evaluate``).
"""

from __future__ import annotations

from omegaconf import OmegaConf

from src.core.checkpoint import rng_state, set_rng_state
from src.core.errors import ConfigError
from src.core.utils import build


def refuse_changed_data(saved_hash: str | None, market, remedy: str, prefix: str = "") -> None:
    """Raise when the checkpoint's data SHA-256 differs from ``market``'s (its splits and normalisation
    came from that file); ``remedy`` says what to do instead."""
    if saved_hash is not None and saved_hash != market.data_hash:
        raise ConfigError(
            f"{prefix}the checkpoint was trained on data with SHA-256 {saved_hash[:12]}..., but {market.source} "
            f"now has {market.data_hash[:12]}...: the data changed; {remedy}"
        )


class CheckpointHooks:
    """Checkpoint save/load hooks of :class:`src.training.module.PPOModule` (which holds the state they save)."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._check_weights("at a checkpoint")  # a NaN model is never saved, as best or as last
        checkpoint["tradelab"] = {
            "env_steps": self.env_steps,
            "market": self.market.describe(),
            "norm": getattr(self.market, "norm_state", lambda: None)(),  # what src.predict normalises new bars with
            "rng": rng_state(),
            "faults": dict(self.faults),
            "val_history": [dict(r) for r in self.val_history],
            "episode_log_growth": None if self._ep_acc is None else self._ep_acc.cpu(),
            "iterations": self.iterations,
        }
        if self.env is not None:  # replay contents, priorities, trackers: a resumed run samples the same
            checkpoint["tradelab"]["addons"] = {type(a).__name__: a.extra_state() for a in self.addons}
        if self.switched_augmentation is not None:
            checkpoint["tradelab"]["switched_augmentation"] = self.switched_augmentation
        if self.env is not None:
            checkpoint["tradelab"]["env"] = self.env.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("tradelab", {})
        refuse_changed_data(state.get("market", {}).get("sha256"), self.market, "start a new run")
        self.env_steps = int(state.get("env_steps", 0))
        self.faults = dict(state.get("faults", self.faults))
        self.val_history = [dict(r) for r in state.get("val_history", [])]
        acc = state.get("episode_log_growth")
        self._ep_acc = None if acc is None else acc.to(self.device)
        self._saved_rng = state.get("rng")
        self._saved_env = state.get("env")
        self.iterations = int(state.get("iterations", 0))
        switched = state.get("switched_augmentation")
        if switched is not None and self.augmenter is None:  # the target run had switched it on: same env again
            self.augmenter = build(OmegaConf.create(switched))
            self.switched_augmentation = dict(switched)
            if self.env is not None:
                self.env = self._train_env(self.env.gen)
        self._saved_extra = state.get("addons")
        fitting = self._trainer is None or self.trainer.state.fn == "fit"  # test() loads weights, not episodes
        if self.env is not None and self._saved_env is not None and fitting:
            self._restore_env(self._saved_env)
        if self.env is not None:
            self._restore_extra(self._saved_extra)

    def _restore_extra(self, saved: dict | None) -> None:
        saved = saved or {}
        for a in self.addons:
            name = type(a).__name__
            if name not in saved and a.extra_state():
                raise ConfigError(f"the checkpoint has no state for {name}: the config's add-ons changed")
            a.load_extra_state(saved.get(name, {}))

    def on_train_start(self) -> None:
        # after Lightning's restore and loop set-up: the next draw is the one the interrupted run made next
        if self._saved_rng is not None:
            set_rng_state(self._saved_rng)
            self._saved_rng = None

    def _restore_env(self, saved: dict) -> None:
        e = self.env
        try:
            e.load_state_dict(saved)
        except (KeyError, ValueError) as err:
            raise ConfigError(f"the checkpoint's env state does not fit this run's env: {err}") from None
        self.obs = e.observe(e.t, e.position)
