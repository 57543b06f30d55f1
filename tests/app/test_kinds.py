"""The table of env kinds (src/app/kinds.py): which kind a config is, which module trains it, and its refusals,
run by the config check in the order they ran before the table (a population's first, then the kind's, after
every value check)."""

from __future__ import annotations

import pytest

from src.app.config_check import check_run, hydra_choices
from src.app.kinds import ASSET, PORTFOLIO, UNIVERSE, kind_of
from src.core.errors import ConfigError
from tests.conftest import TINY, compose_cfg


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({"_target_": "src.data.load_market", "path": "x.csv"}, ASSET),
        ({"_target_": "src.data.planted.planted_suite_market"}, ASSET),
        ({"_target_": "src.data.universe.load_universe", "paths": ["a"]}, UNIVERSE),
        ({"_target_": "src.data.portfolio.load_portfolio", "paths": ["a"], "mode": "long_only"}, PORTFOLIO),
        ({"_target_": "mine.build_tickers", "paths": ["a", "b"]}, UNIVERSE),  # a user's builder: by its keys
        ({"_target_": "mine.build_book", "paths": ["a", "b"], "mode": "long_only"}, PORTFOLIO),
        (None, ASSET),
    ],
)
def test_the_kind_of_an_env_config(env, kind):
    assert kind_of(env) is kind


def test_each_kind_names_its_module_and_only_one_asset_has_a_population_module():
    assert ASSET.module_class(1).__name__ == "PPOModule"
    assert ASSET.module_class(4).__name__ == "PopulationModule"
    assert UNIVERSE.module_class(4).__name__ == "UniverseModule"  # its own module: the refusals stop population > 1
    assert PORTFOLIO.module_class(1).__name__ == "PortfolioModule"
    assert ASSET.acts_live and ASSET.evaluates and not (UNIVERSE.acts_live or PORTFOLIO.evaluates)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["env=universe", "augmentation=jitter"],
         "env=universe: augmentation is not supported (augmented paths are cut from one market's training bars); "
         "set augmentation=none"),
        (["env=universe", "population=2"],
         "env=universe: population > 1 is not supported yet; run the seeds as separate runs"),
        (["env=portfolio", "model=mlp"],
         "env=portfolio needs model=transformer (its encoder runs per asset, then across assets)"),
        (["env=portfolio", "ensemble=three"], "env=portfolio: an ensemble is not supported (ensemble=single)"),
        (["env=portfolio", "algo=grpo"], "env=portfolio: algo=grpo is not supported (algo=ppo)"),
        # a population's own refusals come before the kind's, as check_population ran before the module refused
        (["env=universe", "population=2", "curiosity=rnd"],
         "population=2 supports algo=ppo without add-ons for now; curiosity is set (curiosity=...)"),
        (["population=3", "optimizer=shampoo"],
         "population=3: optimizer=shampoo is not supported; use one of ('adamw', 'sgd', 'muon')"),
        # every value check comes before the kind's refusals
        (["env=portfolio", "curiosity=rnd", "optimizer.lr=-0.1"], "optimizer.lr must be > 0, got -0.1"),
    ],
)  # fmt: skip
def test_refusals_in_one_line_and_in_order(tmp_path, overrides, message):
    cfg = compose_cfg([*_tiny(overrides), *overrides], tmp_path)
    with pytest.raises(ConfigError) as e:
        check_run(cfg, hydra_choices())
    assert str(e.value) == message


def test_what_each_kind_trains_passes(tmp_path):
    for env in (["env=universe"], ["env=portfolio"], ["population=2"]):
        check_run(compose_cfg([*_tiny(env), *env], tmp_path), hydra_choices())


def _tiny(overrides: list[str]) -> list[str]:
    """TINY without the keys of a group the overrides choose another option of (its keys may not exist there)."""
    chosen = {o.split("=", 1)[0] for o in overrides if "." not in o.split("=", 1)[0]}
    return [o for o in TINY if o.split("=", 1)[0].split(".", 1)[0] not in chosen]
