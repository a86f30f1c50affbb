"""Dataset helpers: pure functions, tested on their numbers."""

from __future__ import annotations

import pytest
from vrollout.report.dataset import decile_shares, histogram_bars


def test_decile_shares_sum_to_one_and_place_the_signal():
    steps = [{"reverse_kl": 0.0}] * 19 + [{"reverse_kl": 2.0}]
    shares = decile_shares({"steps": steps})
    assert shares[-1] == pytest.approx(1.0) and sum(shares) == pytest.approx(1.0)
    assert decile_shares({"steps": [{"reverse_kl": 0.0}] * 3}) is None
    short = decile_shares({"steps": [{"reverse_kl": 1.0}] * 3})
    assert sum(short) == pytest.approx(1.0) and short.count(0.0) == 7


def test_histogram_bars():
    bars = histogram_bars([0, 1, 1, 5, 39], "x", "#000", bins=20)
    assert bars["x"][:3] == [0, 2, 4] and sum(bars["y"]) == 5
    assert bars["y"][0] == 3 and bars["y"][2] == 1 and bars["y"][-1] == 1
    assert histogram_bars([], "x", "#000")["y"] == [0]
