"""Where objects moved: the modules of ``src/`` before the packages, and where they are now.

A run's resolved config (its ``config.yaml``, and the copy inside every checkpoint) names the ``_target_`` of
each object it built. Runs saved before src/ was split into packages name the old modules (``src.augment.*``,
``src.callbacks.*``, ...); :func:`renamed` maps them to today's, so those runs still resume, evaluate, predict
and paper-trade. :func:`src.core.utils.build` applies it wherever an object is built from a config.
"""

from __future__ import annotations

from typing import Any

MOVED: dict[str, str] = {  # old module -> its home now
    "src.augment": "src.data.augment",
    "src.broker": "src.live.broker",
    "src.calibration": "src.evaluation.calibration",
    "src.callbacks": "src.training.callbacks",
    "src.checkpoint": "src.core.checkpoint",
    "src.config_check": "src.app.config_check",
    "src.curriculum": "src.training.curriculum",
    "src.curve_fit": "src.training.curve_fit",
    "src.errors": "src.core.errors",
    "src.evaluation": "src.evaluation.walk",
    "src.lit_eval": "src.training.eval_hooks",
    "src.lit_module": "src.training.module",
    "src.lit_population": "src.training.population",
    "src.lit_portfolio": "src.training.portfolio",
    "src.lit_state": "src.training.state",
    "src.lit_step": "src.training.step",
    "src.lit_universe": "src.training.universe",
    "src.loggers": "src.app.loggers",
    "src.metrics": "src.evaluation.metrics",
    "src.population": "src.models.population",
    "src.population_report": "src.reports.population",
    "src.portfolio_eval": "src.evaluation.portfolio",
    "src.profit_target": "src.training.profit_target",
    "src.reporting": "src.reports.run",
    "src.stats": "src.evaluation.stats",
    "src.stats_panel": "src.evaluation.panel",
    "src.suite_report": "src.reports.suite",
    "src.sweeper": "src.core.sweeper",
    "src.universe_eval": "src.evaluation.universe",
    "src.utils": "src.core.utils",
    "src.verdict": "src.evaluation.verdict",
}


def renamed(target: str) -> str:
    """``target`` (``module.name``) with an old module replaced by its new home; anything else unchanged."""
    module, _, name = target.rpartition(".")
    new = MOVED.get(module)
    return f"{new}.{name}" if new and name else target


def renamed_targets(node: Any) -> Any:
    """A plain container (or config node) with every ``_target_`` inside it :func:`renamed`, in place;
    returns ``node``."""
    from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

    if isinstance(node, DictConfig | ListConfig):
        stale = [k for k, v in _targets(OmegaConf.to_container(node, resolve=False)) if renamed(v) != v]
        for path in stale:  # rare: only old runs' configs; written through the node so interpolations stay
            parent = _at(node, path[:-1])
            with read_write(parent), open_dict(parent):
                parent["_target_"] = renamed(parent["_target_"])
        return node
    for path, value in _targets(node):
        _at(node, path[:-1])["_target_"] = renamed(value)
    return node


def _at(node: Any, path: tuple) -> Any:
    """The container at ``path`` (keys and list indices) inside ``node``."""
    for k in path:
        node = node[k]
    return node


def _targets(x: Any, path: tuple = ()):
    """``(path to the key, value)`` of every ``_target_`` string in a plain container."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "_target_" and isinstance(v, str):
                yield (*path, k), v
            else:
                yield from _targets(v, (*path, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _targets(v, (*path, i))
