"""Which kind a run is, and everything that depends on it: the one table that ``src.train``, ``src.predict``,
``src.evaluate``, ``src.walk_forward`` and ``src.suite`` consult.

A kind is decided by the env's builder (its ``_target_``): one asset (``env=tsla``, ``env=csv``, the planted
and synthetic markets), a universe of them (``env=universe``) or a portfolio over them (``env=portfolio``). Each
kind names its LightningModule, what it cannot train with (:class:`Refusal` rows, run by
:func:`src.app.config_check.check_run` before anything is written), whether the deployed-agent commands can act
on it, how many bars a walk-forward cuts its folds from, and its report section. A population (``population=K``)
is a member axis of the one-asset kind, with refusals of its own (:data:`POPULATION`), checked before the kind's.

To add a kind: a builder in ``src/data/``, its env in ``src/envs/``, its LightningModule in ``src/training/``, and
one :class:`Kind` row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from src.core.errors import ConfigError


@dataclass(frozen=True)
class Refusal:
    """A configuration a kind cannot train: ``when(cfg)`` true stops the run with ``message`` (one line)."""

    when: Callable[[Any], bool]
    message: str


def _set(key: str) -> Callable[[Any], bool]:
    return lambda cfg: bool(cfg.get(key))


def _population(cfg) -> int:
    return int(cfg.get("population", 1) or 1)


def _ensemble(cfg) -> int:
    return int((cfg.get("ensemble") or {}).get("size", 1))


def _target(cfg, group: str) -> str:
    return str((cfg.get(group) or {}).get("_target_", ""))


def _optimizer(cfg) -> str:
    return _target(cfg, "optimizer").rsplit(".", 1)[-1]


def _add_on(kind: str, key: str, why: str) -> Refusal:
    return Refusal(_set(key), f"env={kind}: {key} is not supported ({why}); set {key}=none")


@dataclass(frozen=True)
class Kind:
    """One row of the table: see the module docstring."""

    name: str
    module: str  # the LightningModule, "package.module.Class"
    refusals: tuple[Refusal, ...] = ()
    acts_live: bool = False  # src.predict, src.paper and src.export take its agents
    evaluates: bool = False  # src.evaluate re-evaluates its checkpoints
    benchmark: str = "buy-and-hold"  # what its report's title compares the agent with
    section: Callable[[Any, float], tuple[dict, list[str]]] | None = None  # (module, bars a year) -> report part
    lengths: Callable[[Any], int] = field(default=lambda data: len(data.bars))  # bars a walk-forward cuts
    population_module: str | None = None  # the LightningModule of K members at once, where the kind has one
    baselines: str = "Buy-and-hold is 100% long the asset throughout, whatever the agent's position limits."

    def module_class(self, population: int = 1) -> type:
        """The LightningModule that trains this kind (its population's for ``population > 1``, where it has one:
        elsewhere the kind's own module, whose config the refusals stop)."""
        return _locate(self.population_module if population > 1 and self.population_module else self.module)

    def refuse(self, cfg) -> None:
        """Raise the first refusal that applies to ``cfg``: a population's per-member ones first, then the kind's."""
        _refuse((*(POPULATION if _population(cfg) > 1 else ()), *self.refusals), cfg)

    def report(self, module, bars_per_year: float) -> tuple[dict, list[str]] | None:
        """This kind's report section of a tested module (``None``: the plain run report says it all)."""
        return None if self.section is None else self.section(module, bars_per_year)


def refuse_population(cfg) -> None:
    """Raise the first of a population's refusals that applies to ``cfg`` (``population > 1``)."""
    _refuse(POPULATION, cfg)


def _refuse(rows: tuple[Refusal, ...], cfg) -> None:
    for row in rows:
        if row.when(cfg):
            raise ConfigError(row.message.format(k=_population(cfg), opt=_optimizer(cfg)))


def _locate(path: str):
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)


POPULATION_OPTIMIZERS = ("adamw", "sgd", "muon")
_EVERY_MEMBER = "would stop every member together"
POPULATION = (  # what a population cannot train per member
    Refusal(lambda c: not _target(c, "algo").endswith("PPOConfig"),
            "population={k} supports algo=ppo without add-ons for now; algo is set (algo=...)"),
    *(Refusal(_set(key), f"population={{k}} supports algo=ppo without add-ons for now; {key} is set ({key}=...)")
      for key in ("curiosity", "replay", "augmentation", "curriculum", "target")),
    Refusal(lambda c: _ensemble(c) > 1,
            "population={k} with an ensemble is not supported (each member is one actor-critic)"),
    Refusal(lambda c: c["algo"].get("target_kl") is not None,
            "population={k}: algo.target_kl stops every member's epochs together; set it to null"),
    Refusal(lambda c: float((c.get("model") or {}).get("dropout", 0.0) or 0.0) > 0,
            "population={k}: model.dropout must be 0 (dropout masks would not come from each member's own random "
            "stream)"),
    Refusal(_set("compile"), "population={k}: compile=true is not supported (the members already run batched)"),
    Refusal(lambda c: _optimizer(c) not in POPULATION_OPTIMIZERS,
            f"population={{k}}: optimizer={{opt}} is not supported; use one of {POPULATION_OPTIMIZERS}"),
    Refusal(lambda c: any(str(cb.get("_target_", "")).endswith("CurveFitEarlyStopping")
                          for cb in (c.get("callbacks") or {}).values() if cb is not None and hasattr(cb, "get")),
            f"population={{k}}: curve-fit early stopping {_EVERY_MEMBER}; use callbacks=default"),
    Refusal(lambda c: bool(c["trainer"].get("max_time")),
            f"population={{k}}: trainer.max_time {_EVERY_MEMBER}; use trainer.max_steps"),
    Refusal(lambda c: str(c["trainer"].get("strategy", "auto")).startswith("ddp")
            or int(c["trainer"].get("devices", 1)) > 1,
            "population={k}: one process only (the members are the parallelism); use trainer=default"),
)  # fmt: skip


def _dates(data) -> int:
    """A universe's or a portfolio's dates that every ticker covers (their splits count those:
    :func:`src.data.universe.shared_split_dates`)."""
    return len(getattr(data, "universe", data).dates)


def _universe_section(module, bars_per_year: float) -> tuple[dict, list[str]]:
    """Every ticker's test table and the pooled verdict."""
    from src.evaluation.universe import universe_section

    return universe_section(module.ticker_results["test"], bars_per_year)


def _portfolio_section(module, bars_per_year: float) -> tuple[dict, list[str]]:
    """The agent against 1/N, the baselines and every asset."""
    from src.evaluation.portfolio import portfolio_section

    return portfolio_section(module.results["test"], module.asset_results["test"], bars_per_year)


_NO_POPULATION = "population > 1 is not supported yet; run the seeds as separate runs"
ASSET = Kind(
    "asset",
    "src.training.module.PPOModule",
    acts_live=True,
    evaluates=True,
    population_module="src.training.population.PopulationModule",
)
UNIVERSE = Kind(
    "universe", "src.training.universe.UniverseModule",
    refusals=(
        _add_on("universe", "augmentation", "augmented paths are cut from one market's training bars"),
        _add_on("universe", "curriculum", "a curriculum orders one market's episodes and scales one cost"),
        _add_on("universe", "target", "the profitability target may switch augmentation on"),
        Refusal(lambda c: _population(c) > 1, f"env=universe: {_NO_POPULATION}"),
    ),
    section=_universe_section, lengths=_dates,
)  # fmt: skip
PORTFOLIO = Kind(
    "portfolio", "src.training.portfolio.PortfolioModule",
    refusals=(
        _add_on("portfolio", "augmentation", "augmented paths are cut from one asset's bars"),
        _add_on("portfolio", "curriculum", "a curriculum orders one market's episodes"),
        _add_on("portfolio", "target", "the profitability target may switch augmentation on"),
        _add_on("portfolio", "curiosity", "RND's predictor reads one asset's window and weight"),
        _add_on("portfolio", "replay", "the replay buffers hold one asset's observations"),
        Refusal(lambda c: _population(c) > 1, f"env=portfolio: {_NO_POPULATION}"),
        Refusal(lambda c: _ensemble(c) > 1, "env=portfolio: an ensemble is not supported (ensemble=single)"),
        Refusal(lambda c: "grpo" in _target(c, "algo").lower(), "env=portfolio: algo=grpo is not supported (algo=ppo)"),
        Refusal(_set("compile"), "env=portfolio: compile=true is not supported (the portfolio env runs eager)"),
        Refusal(lambda c: "transformer" not in _target(c, "model"),
                "env=portfolio needs model=transformer (its encoder runs per asset, then across assets)"),
    ),
    benchmark="equal-weight buy-and-hold", section=_portfolio_section, lengths=_dates,
    baselines="Buy-and-hold is the equal-weight book of the assets, bought at the first open and left to drift; "
              "1/N is rebalanced to equal weights monthly.",
)  # fmt: skip
KINDS = {"load_universe": UNIVERSE, "load_portfolio": PORTFOLIO}  # by the env builder's name


def kind_of(env) -> Kind:
    """The kind of a run from its env config (a config node or a plain dict, as a checkpoint saves it): by its
    builder's name; a builder of the user's own by the keys its config has (``paths``: several markets, and
    ``mode`` as well: a portfolio), as the shipped configs of those kinds have them."""
    env = env or {}
    kind = KINDS.get(str(env.get("_target_", "")).rsplit(".", 1)[-1])
    if kind is None and "paths" in env:
        kind = PORTFOLIO if "mode" in env else UNIVERSE
    return kind or ASSET
