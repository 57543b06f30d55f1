"""A Beta distribution scaled to target weights in [-1, 1].

A bounded action needs a bounded distribution: clipping a Gaussian puts mass
on the bounds that its log-probability does not account for. The Beta
(Chou et al., 2017) has exact log-probabilities and entropy on its support.
With ``a = 2x - 1`` and ``x ~ Beta(alpha, beta)``:
``log p(a) = log p(x) - log 2`` and ``H(a) = H(x) + log 2``.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Beta

LOG2 = math.log(2.0)
X_EPS = 1e-6  # keep samples off the exact bounds, where the Beta density is 0 or infinite


class ScaledBeta:
    """Beta over [-1, 1] with concentrations ``alpha, beta`` > 1 (unimodal)."""

    def __init__(self, alpha: torch.Tensor, beta: torch.Tensor) -> None:
        self.alpha, self.beta = alpha, beta
        self._d = Beta(alpha, beta, validate_args=False)

    def sample(self) -> torch.Tensor:
        x = self._d.sample().clamp(X_EPS, 1 - X_EPS)
        return 2 * x - 1

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        x = ((action + 1) / 2).clamp(X_EPS, 1 - X_EPS)
        return self._d.log_prob(x) - LOG2

    def entropy(self) -> torch.Tensor:
        return self._d.entropy() + LOG2

    @property
    def mean(self) -> torch.Tensor:
        """The deterministic action used for evaluation."""
        return 2 * self.alpha / (self.alpha + self.beta) - 1
