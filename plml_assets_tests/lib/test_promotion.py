import math

import pytest

from plml_assets.lib.registry.promotion import decide


@pytest.mark.parametrize(
    "challenger, reference, kwargs, passed",
    [
        (0.03, 0.01, {}, True),
        (0.01, 0.01, {}, False),  # equal is not better
        (0.02, 0.01, {"min_improvement": 0.02}, False),
        (0.05, 0.01, {"min_improvement": 0.02}, True),
        (-0.01, -0.05, {}, True),  # better than a worse reference, even if negative...
        (-0.01, -0.05, {"min_metric": 0.0}, False),  # ...unless a floor is set
        (math.nan, 0.01, {}, False),
        (0.02, math.nan, {}, True),  # an undefined reference is beaten by a positive score only
        (-0.02, math.nan, {}, False),
        (0.0, math.nan, {}, False),
        (0.33, 0.01, {"suspicious_above": 0.2}, False),  # a leak, not a breakthrough
        (0.15, 0.01, {"suspicious_above": 0.2}, True),
    ],
)
def test_decide(challenger, reference, kwargs, passed):
    decision = decide(challenger, reference, **kwargs)
    assert decision.passed is passed
    assert decision.reason


def test_margin_and_reason_name_the_numbers():
    d = decide(0.03, 0.01, min_improvement=0.005)
    assert d.margin == pytest.approx(0.02)
    assert "+0.0200" in d.reason


def test_negative_min_improvement_is_rejected():
    with pytest.raises(ValueError, match="min_improvement"):
        decide(0.1, 0.0, min_improvement=-0.1)
