"""A Beta distribution scaled to the target weights the market allows, [low, high] (default [-1, 1]).

A bounded action needs a bounded distribution: clipping a Gaussian puts mass
on the bounds that its log-probability does not account for. The Beta
(Chou et al., 2017) has exact log-probabilities and entropy on its support.
With ``a = low + (high - low) x`` and ``x ~ Beta(alpha, beta)``:
``log p(a) = log p(x) - log(high - low)`` and ``H(a) = H(x) + log(high - low)``.
The support is the env's ``position_limits``, so no mass falls outside them
(long-only [0, 1] is a Beta over [0, 1], leverage [-2, 2] one over [-2, 2]).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Beta

LOG2 = math.log(2.0)
X_EPS = 1e-6  # keep samples off the exact bounds, where the Beta density is 0 or infinite


class ScaledBeta:
    """Beta over [low, high] with concentrations ``alpha, beta`` > 1 (unimodal)."""

    def __init__(self, alpha: torch.Tensor, beta: torch.Tensor, low: float = -1.0, high: float = 1.0) -> None:
        if not low < high:
            raise ValueError(f"a ScaledBeta needs low < high, got [{low}, {high}]")
        self.alpha, self.beta = alpha, beta
        self.low, self.width = float(low), float(high) - float(low)
        self._log_width = math.log(self.width)
        self._d = Beta(alpha, beta, validate_args=False)

    def sample(self) -> torch.Tensor:
        x = self._d.sample().clamp(X_EPS, 1 - X_EPS)
        return self.width * x + self.low

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        x = ((action - self.low) / self.width).clamp(X_EPS, 1 - X_EPS)
        return self._d.log_prob(x) - self._log_width

    def entropy(self) -> torch.Tensor:
        return self._d.entropy() + self._log_width

    def regularizer(self) -> tuple[float, dict]:
        """The policy's own loss term and its logged parts (an ensemble's diversity; none here)."""
        return 0.0, {}

    @property
    def mean(self) -> torch.Tensor:
        """The deterministic action used for evaluation."""
        return self.width * self.alpha / (self.alpha + self.beta) + self.low
