"""Reinforcement-learning maths as pure functions: returns, advantages and losses."""
