"""Hydra sweeper plugin: the Optuna sweeper with pruning, a trial table and a deflated-Sharpe summary."""
