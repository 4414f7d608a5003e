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


class SelectionSettings(dg.ConfigurableResource):
    """Feature-selection knobs, shared by ``feature_selection`` (the final model's features) and
    ``xgboost_cv_results``, which re-runs the same selection inside every CV fold on that fold's
    training rows only, so that the CV score is not flattered by features chosen on its test dates."""

    max_features: int = Field(default=30, description="keep at most this many features")
    max_missing_ratio: float = Field(default=0.2, description="drop features missing in more than this share of training rows")
    correlation_threshold: float = Field(default=0.95, description="of a pair correlated above this, keep the more important")
    leakage_corr_threshold: float = Field(default=0.3, description="|corr(feature, label)| above this raises the leakage alarm and drops the feature")
    importance: str = Field(default="gain", description="'gain' (XGBoost total gain), 'permutation' (rank-IC drop on validation "
                            "folds) or 'shap_stable' (mean |TreeSHAP| share on validation folds; features whose share varies "
                            "across the folds by more than shap_max_cv are dropped)")
    shap_max_cv: float = Field(default=1.0, gt=0, description="with importance='shap_stable': the largest coefficient of variation "
                               "(std / mean over the folds) of a feature's SHAP share that keeps it")
    n_folds: int = Field(default=3, description="purged walk-forward folds over the training rows")
    n_estimators: int = Field(default=60, description="rounds of the importance models")
    sample_rows: int = Field(default=200_000, description="rows sampled (seeded) for the importance models")

    def selection_config(self, seed: int):
        from plml_assets.lib.selection.selector import SelectionConfig

        config = SelectionConfig(
            max_features=self.max_features,
            max_missing_ratio=self.max_missing_ratio,
            correlation_threshold=self.correlation_threshold,
            leakage_corr_threshold=self.leakage_corr_threshold,
            importance=self.importance,
            shap_max_cv=self.shap_max_cv,
            n_estimators=self.n_estimators,
            seed=seed,
            sample_rows=self.sample_rows,
            n_threads=1,
        )
        config.validate()
        if not 2 <= self.n_folds <= 20:
            raise ValueError(f"SelectionSettings.n_folds must be between 2 and 20, got {self.n_folds}")
        return config
