"""Deterministic evaluation (the ledger walk), metrics, statistical tests, verdicts, oracles, universes, portfolios."""
