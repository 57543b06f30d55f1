"""Market data: loading, validation, causal features and chronological splits."""

from src.data.loader import load_ohlcv
from src.data.market import Costs, Market, build_market, infer_bars_per_year, load_market
from src.data.synthetic import synthetic_market

__all__ = ["Costs", "Market", "build_market", "infer_bars_per_year", "load_market", "load_ohlcv", "synthetic_market"]
