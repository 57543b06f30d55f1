"""Every metric against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from src.evaluation.metrics import compute_metrics, max_drawdown

R = [0.10, -0.05, 0.02, 0.0]
POS = [1.0, 1.0, 0.5, 0.0]
TURN = [1.0, 0.0, 0.5, 0.5]


def test_metrics_hand_computed():
    m = compute_metrics(R, POS, TURN, bars_per_year=252)
    total = 1.10 * 0.95 * 1.02 - 1  # 0.0659
    assert m["total_return"] == pytest.approx(0.0659)
    assert m["final_equity"] == pytest.approx(1.0659)
    assert m["annual_return"] == pytest.approx(1.0659 ** (252 / 4) - 1)
    # mean 0.0175; squared deviations .0825^2 + .0675^2 + .0025^2 + .0175^2 = .011675; ddof 1
    sd = math.sqrt(0.011675 / 3)
    assert m["annual_volatility"] == pytest.approx(sd * math.sqrt(252))
    assert m["sharpe"] == pytest.approx(0.0175 / sd * math.sqrt(252))
    # downside deviation sqrt(0.05^2 / 4) = 0.025
    assert m["sortino"] == pytest.approx(0.0175 / 0.025 * math.sqrt(252))
    # equity 1, 1.1, 1.045, 1.0659, 1.0659: worst fall 1.1 -> 1.045
    assert m["max_drawdown"] == pytest.approx(0.05)
    assert m["calmar"] == pytest.approx((1.0659**63 - 1) / 0.05)
    # bars in the market: the first three (0.10, -0.05, 0.02)
    assert m["win_rate"] == pytest.approx(2 / 3)
    assert m["profit_factor"] == pytest.approx(0.12 / 0.05)
    assert m["trades"] == 3
    assert m["turnover"] == pytest.approx(2.0 * 252 / 4)
    assert m["exposure"] == pytest.approx(2.5 / 4)
    assert m["bars"] == 4
    assert total == pytest.approx(m["total_return"])


def test_flat_and_degenerate_conventions():
    m = compute_metrics([0.0] * 5, [0.0] * 5, [0.0] * 5, 252)
    assert m["sharpe"] == m["sortino"] == m["calmar"] == m["max_drawdown"] == m["win_rate"] == 0.0
    assert m["profit_factor"] == 0.0 and m["trades"] == 0
    up = compute_metrics([0.01, 0.02], [1.0, 1.0], [1.0, 0.0], 252)
    assert up["profit_factor"] == math.inf and up["sortino"] == 0.0 and up["max_drawdown"] == 0.0


def test_max_drawdown_includes_a_loss_from_the_start():
    assert max_drawdown([-0.1, 0.05]) == pytest.approx(0.1)
    assert max_drawdown([0.5, -0.5, 0.2]) == pytest.approx(0.5)


def test_rejects_empty():
    with pytest.raises(ValueError):
        compute_metrics([], [], [], 252)
