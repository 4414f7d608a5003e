"""Experiment-wide knobs that several assets must agree on (horizon, holdout, embargo, seed).

Asset-specific knobs live in each asset's ``dg.Config``; these live in one resource so that the
labels, the splitters, the checks and the promotion gate cannot disagree about the horizon.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field, field_validator


class ExperimentSettings(dg.ConfigurableResource):
    horizon: int = Field(default=5, description="label horizon in trading days (env PLML_HORIZON)")
    holdout_days: int = Field(
        default=250, description="final holdout window in trading days, untouched by selection, CV and training"
    )
    embargo_days: int = Field(default=5, description="trading days embargoed after each test block")
    seed: int = Field(default=0, description="seed for every random choice")
    profile: str = Field(default="full", description="'full' or 'quick' (smaller CV and boosting budgets; env PLML_PROFILE)")

    @field_validator("horizon")
    @classmethod
    def _horizon(cls, v: int) -> int:
        if not 1 <= v <= 250:
            raise ValueError(f"horizon must be between 1 and 250 trading days, got {v}")
        return v

    @field_validator("holdout_days")
    @classmethod
    def _holdout(cls, v: int) -> int:
        if not 20 <= v <= 2500:
            raise ValueError(f"holdout_days must be between 20 and 2500, got {v}")
        return v

    @field_validator("embargo_days")
    @classmethod
    def _embargo(cls, v: int) -> int:
        if not 0 <= v <= 250:
            raise ValueError(f"embargo_days must be between 0 and 250, got {v}")
        return v

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        if v not in ("full", "quick"):
            raise ValueError(f"profile must be 'full' or 'quick', got {v!r}")
        return v

    @property
    def quick(self) -> bool:
        return self.profile == "quick"
