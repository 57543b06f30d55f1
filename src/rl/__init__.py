"""Reinforcement learning: returns, advantages and losses as pure functions, the update rules (PPO, GRPO, a
population's per-member targets), the rollout, and the add-ons of an iteration (curiosity, replay, hindsight)."""
