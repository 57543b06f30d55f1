"""The Optuna trial a training job runs in, when a sweep has one (see ``hydra_plugins/``)."""

from __future__ import annotations

from typing import Any

_ACTIVE: Any = None


def active_trial() -> Any:
    """The running ``optuna.Trial`` (in-process sweeps), or None outside a pruning-aware sweep."""
    return _ACTIVE


def set_active_trial(trial: Any) -> None:
    global _ACTIVE
    _ACTIVE = trial


_PRUNED = False


def mark_pruned() -> None:
    """Called by the job when the trial's pruner stopped it (the sweeper then tells Optuna PRUNED)."""
    global _PRUNED
    _PRUNED = True


def take_pruned() -> bool:
    """Whether the last job was pruned; resets the flag."""
    global _PRUNED
    was, _PRUNED = _PRUNED, False
    return was
