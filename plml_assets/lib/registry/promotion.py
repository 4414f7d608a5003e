"""The promotion rule: when does a challenger replace the reference (champion or baseline)?"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    margin: float
    reason: str


def decide(
    challenger: float,
    reference: float,
    *,
    min_improvement: float = 0.0,
    min_metric: float | None = None,
    suspicious_above: float | None = None,
    metric: str = "rank_ic",
) -> GateDecision:
    """Higher is better. The challenger must have a defined score, clear ``min_metric`` when set,
    and beat the reference by more than ``min_improvement``. An undefined reference (e.g. a
    constant champion has no rank IC) is beaten only by a positive score. A score above
    ``suspicious_above`` is refused as a probable leak (a look-ahead feature once gave a holdout
    rank IC of 0.33 here, where honest models reach 0.01-0.03)."""
    if min_improvement < 0:
        raise ValueError(f"min_improvement must be >= 0, got {min_improvement}")
    margin = challenger - reference if math.isfinite(challenger) and math.isfinite(reference) else math.nan
    if not math.isfinite(challenger):
        return GateDecision(False, margin, f"the challenger's holdout {metric} is undefined")
    if suspicious_above is not None and challenger > suspicious_above:
        return GateDecision(
            False, margin,
            f"the challenger's holdout {metric} {challenger:.4f} is above {suspicious_above}: too good to be true "
            "for daily equity returns, check the features and labels for look-ahead",
        )
    if min_metric is not None and not challenger > min_metric:
        return GateDecision(False, margin, f"the challenger's holdout {metric} {challenger:.4f} is not above the floor {min_metric}")
    if not math.isfinite(reference):
        if challenger > 0:
            return GateDecision(True, margin, f"the reference's {metric} is undefined and the challenger's is positive")
        return GateDecision(False, margin, f"the reference's {metric} is undefined and the challenger's is not positive")
    if margin > min_improvement:
        return GateDecision(True, margin, f"margin {margin:+.4f} > {min_improvement}")
    return GateDecision(False, margin, f"margin {margin:+.4f} is not above {min_improvement}")
