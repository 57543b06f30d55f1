"""Optimizer factories and learning-rate schedules."""
