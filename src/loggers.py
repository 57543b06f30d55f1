"""``logger=...``: which Lightning loggers a run writes to (``conf/logger/``).

``tensorboard`` (default) and ``csv`` are Lightning's own; ``many`` is a list of them (every scalar reaches each).
The resolved config goes to each logger's hyper-parameters (:func:`src.train._train`); the equity figure is
drawn into TensorBoard when one is among them, and every logger's run directory holds ``report.md`` and
``equity.png`` beside it (the run directory).
"""

from __future__ import annotations

from lightning.pytorch.loggers import Logger

from src.errors import ConfigError
from src.utils import build


def many(**loggers) -> list[Logger]:
    """The loggers configured under ``logger.<name>`` (each a node with its ``_target_``), in that order."""
    if not loggers:
        raise ConfigError("logger=many: give at least one logger under logger.<name>")
    return [build(node) for node in loggers.values()]


def as_list(logger) -> list[Logger]:
    """A logger setting as a list: False/None gives none, one logger itself, a list as is."""
    if not logger:
        return []
    return list(logger) if isinstance(logger, list | tuple) else [logger]
