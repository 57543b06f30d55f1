"""Hydra's sweep syntax as an Optuna search space: ``choice``, ``range``, ``interval`` and ``tag(log, ...)``.

``key=choice(a, b)`` is categorical; ``key=range(lo, hi, step)`` the integers (or floats) Python's ``range`` gives,
the last one included and ``hi`` excluded, as in Hydra's basic sweeper; ``shuffle(range(...))`` is categorical;
``key=interval(lo, hi)`` is uniform on the reals in [lo, hi] (Hydra reads its ends as floats: use ``range`` for
integers) and ``tag(log, interval(...))`` log-uniform. Any other override is a fixed value, passed to every trial
as given.
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def distribution(override: Override) -> BaseDistribution | str:
    """The Optuna distribution of one sweep override, or the value of a fixed one (as a string)."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        bad = [c for c in choices if not isinstance(c, str | int | float | bool | type(None))]
        if bad:
            raise ValueError(
                f"hydra.sweeper.params.{key}: a choice takes str, int, float, bool or null, got {bad[0]!r}"
            )
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"hydra.sweeper.params.{key}: {override.input_line} is empty")
        step = value.step if value.step is not None else 1
        if all(isinstance(v, int) for v in (value.start, value.stop, step)):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(step))
        return FloatDistribution(float(value.start), float(value.start) + float(step) * (len(values) - 1), step=step)
    if isinstance(value, IntervalSweep):
        return FloatDistribution(float(value.start), float(value.end), log="log" in value.tags)
    raise ValueError(f"hydra.sweeper.params.{key}: {override.input_line} is not a sweep Optuna can sample")


def search_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """``(distributions, fixed)`` from ``key=value`` overrides; a later override of a key replaces an earlier one."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        value = distribution(override)
        space.pop(key, None)
        fixed.pop(key, None)
        (space if isinstance(value, BaseDistribution) else fixed)[key] = value
    return space, fixed


def suggest(trial: Any, name: str, dist: BaseDistribution) -> Any:
    """``trial.suggest_*`` for ``dist`` (public API; a re-queued trial gets back its fixed parameters)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"{name}: unsupported distribution {type(dist).__name__}")


def grid(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """Every value of each (discrete) distribution, for ``GridSampler``."""
    out = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            out[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            out[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            n = round((dist.high - dist.low) / dist.step) + 1
            out[name] = [dist.low + i * dist.step for i in range(n)]
        else:
            raise ValueError(f"hydra.sweeper.params.{name}: the grid sampler needs choice() or range(), not {dist}")
    return out
