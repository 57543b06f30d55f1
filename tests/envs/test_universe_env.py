"""The universe's training env: each env on its own ticker's bars and costs, as that ticker's own env would be."""

from __future__ import annotations

import pytest
import torch

from src.data.universe import load_universe
from src.envs.market_env import MarketEnv
from src.envs.universe_env import UniverseEnv
from tests.helpers import write_ticker_csv


@pytest.fixture
def universe(tmp_path):
    files = [write_ticker_csv(tmp_path / "aaa_daily.csv", 900, 1, "2000-01-03"), write_ticker_csv(tmp_path / "bbb_daily.csv", 500, 2,
             "2001-06-01"), write_ticker_csv(tmp_path / "ccc_daily.csv", 700, 3, "2000-09-01")]  # fmt: skip
    return load_universe(files, window=10, episode_length=40, min_trade=0.0,
                         costs={"spread_bps": 2.0, "borrow_bps": 30.0},
                         ticker_costs={"bbb": {"spread_bps": 100.0, "commission_bps": 5.0}})  # fmt: skip


def test_an_env_earns_what_its_tickers_own_env_earns(universe):
    """Envs placed on bars of each ticker step with the same actions as that ticker's own MarketEnv: same
    rewards, costs, financing and observations, to the bit; the 100-bp ticker pays its own costs."""
    n = 6
    env = UniverseEnv(universe, n, torch.Generator().manual_seed(0), episode_length=30)
    env.reset()
    local = torch.tensor([20, 100, 15, 200, 30, 60])
    tick = torch.tensor([0, 0, 1, 1, 2, 2])
    env.t.copy_(env.offsets[tick] + local)
    env._per_ticker()
    own = []
    for k in range(n):
        e = MarketEnv(universe.markets[int(tick[k])], "train", 1, random_start=False, episode_length=30)
        e.reset()
        e.t.fill_(int(local[k]))
        own.append(e)
    g = torch.Generator().manual_seed(1)
    costs = torch.zeros(n)
    for _ in range(25):
        a = torch.rand(n, generator=g) * 2 - 1
        obs, r, _, _, info = env.step(a)
        for k, e in enumerate(own):
            o, rk, _, _, ik = e.step(a[k : k + 1])
            assert torch.equal(r[k : k + 1], rk)
            for key in ("cost", "financing", "net_return", "equity"):
                assert torch.equal(info[key][k : k + 1], ik[key]), key
            assert torch.equal(obs.market[k], o.market[0])
        costs += info["cost"]
    assert costs[2:4].min() > 10 * costs[[0, 1, 4, 5]].max()  # bbb's spread and commission


def test_episodes_stay_on_their_tickers_training_bars(universe):
    """An episode longer than a ticker's training bars stops at their end, never walking into the next ticker's."""
    env = UniverseEnv(universe, 64, torch.Generator().manual_seed(2), episode_length=400)
    assert int((env.hi - env.lo).min()) < 400  # bbb's training decisions are fewer than an episode's steps
    env.reset()
    seen = torch.zeros(3)
    for _ in range(450):  # past the end of bbb's training bars
        before = env.ticker.clone()
        _, _, _, _, info = env.step(torch.rand(64, generator=torch.Generator().manual_seed(3)) * 2 - 1)
        reached = info["final_t"]
        assert torch.all(reached > env.lo[before]) and torch.all(reached <= env.hi[before] + 1)
        seen += torch.bincount(env.ticker, minlength=3)
    assert seen.min() > 0  # every ticker is trained on (its share of steps: the start test)


def test_starts_are_drawn_uniformly_over_tickers_or_by_bars(universe):
    def shares(weights: str) -> torch.Tensor:
        env = UniverseEnv(universe, 30000, torch.Generator().manual_seed(4), weights=weights)
        env.reset()
        assert torch.all(env.t >= env.lo[env.ticker]) and torch.all(env.t <= env.hi[env.ticker])
        return torch.bincount(env.ticker, minlength=3) / 30000

    torch.testing.assert_close(shares("uniform"), torch.full((3,), 1 / 3), atol=0.015, rtol=0)
    env = UniverseEnv(universe, 1, torch.Generator())
    count = (torch.maximum(env.lo, env.hi - env.max_len + 1) - env.lo + 1).float()
    torch.testing.assert_close(shares("bars"), count / count.sum(), atol=0.015, rtol=0)


def test_a_checkpoint_refuses_a_universe_whose_data_or_order_changed(universe, tmp_path):
    """Saved env states hold bars of the tickers laid end to end: resuming on other files, or the same files in
    another order, would put episodes on the wrong ticker, so the checkpoint's data hash refuses it."""
    from src.core.errors import ConfigError
    from src.data.universe import load_universe
    from src.envs.universe_env import concatenated
    from src.training.state import refuse_changed_data

    saved = concatenated(universe).describe()["sha256"]
    paths = [m.source for m in universe.markets]
    refuse_changed_data(saved, concatenated(load_universe(paths, window=10, episode_length=40)), "start anew")
    swapped = load_universe([paths[1], paths[0], paths[2]], window=10, episode_length=40)
    with pytest.raises(ConfigError, match="the data changed"):
        refuse_changed_data(saved, concatenated(swapped), "start anew")


def test_a_saved_env_continues_the_same_episodes(universe):
    """state_dict / load_state_dict (what a resumed run restores): the same tickers, costs and stops, the same
    rewards afterwards, restarts included."""
    a = UniverseEnv(universe, 8, torch.Generator().manual_seed(5), episode_length=20)
    a.reset()
    g = torch.Generator().manual_seed(6)
    for _ in range(13):
        a.step(torch.rand(8, generator=g) * 2 - 1)
    b = UniverseEnv(universe, 8, torch.Generator().manual_seed(99), episode_length=20)
    b.reset()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.ticker, b.ticker) and torch.equal(a._stop, b._stop) and torch.equal(a._k.rate, b._k.rate)
    for _ in range(30):  # past the episodes' end: the restarts draw from the restored generator
        act = torch.rand(8, generator=g) * 2 - 1
        ra, rb = a.step(act)[1], b.step(act)[1]
        assert torch.equal(ra, rb)
