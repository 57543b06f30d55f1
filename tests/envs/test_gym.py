"""The Gymnasium wrapper passes the official checker and trains Stable-Baselines3 PPO."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from src.data import synthetic_market
from src.envs.gym_wrapper import TradingEnv


@pytest.fixture(scope="module")
def market():
    return synthetic_market(n_bars=400, window=8, episode_length=32)


def test_check_env(market):
    check_env(TradingEnv(market), skip_render_check=True)


def test_reset_with_start_and_episode_end(market):
    env = TradingEnv(market)
    first, _ = env._env.first, env._env.last
    obs, info = env.reset(seed=0, options={"start": first})
    assert info["t"] == first and obs["market"].shape == (8, market.num_features)
    steps, done = 0, False
    while not done:
        obs, reward, term, trunc, info = env.step(np.array([0.5], dtype=np.float32))
        steps += 1
        done = term or trunc
    assert trunc and steps == 32 and np.isfinite(reward)
    with pytest.raises(RuntimeError, match="call reset"):  # never a step past the truncation
        env.step(np.array([0.5], dtype=np.float32))
    # at the end of the split too: the last bar realised is the split's last, never the next split's first
    env.reset(options={"start": env._env.last})
    _, _, _, trunc, info = env.step(np.array([0.5], dtype=np.float32))
    assert trunc and info["t"] == env._env.last + 1 == market.splits["train"][1] - 1
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.array([0.5], dtype=np.float32))
    with pytest.raises(ValueError, match="options"):
        env.reset(options={"start": 0})


def test_stable_baselines3_ppo_trains_on_it(market):
    sb3 = pytest.importorskip("stable_baselines3")
    env = TradingEnv(market)
    model = sb3.PPO("MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, verbose=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    action, _ = model.predict(env.reset(seed=1)[0], deterministic=True)
    assert action.shape == (1,) and -1 <= float(action[0]) <= 1
