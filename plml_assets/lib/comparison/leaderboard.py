"""Model selection: every candidate on the same evidence, a declared rule, and a validated pick.

A candidate is a tuned single model, an ensemble, or a baseline. Each brings the same evidence:
per-fold validation rank ICs on the shared purged CV folds, the mean train/validation gap, the
out-of-fold long-short returns on the walk-forward validation dates (net of costs), the holdout
rank IC and holdout net Sharpe, its training cost, and how many configurations were tried to
produce it. The rule (:class:`SelectionCriteria`) filters on what is known before the holdout
(stability across folds, gap, deflated Sharpe, cost; PBO over the whole candidate set) and picks
the best primary metric among the survivors. The holdout is read only afterwards, once, to check
that the pick beats the baseline: if it does not, nothing new should be promoted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from plml_assets.lib.validation import overfitting as of

KINDS = ("model", "ensemble", "baseline")
# Table columns a rule may rank by; all are known before the holdout is looked at.
PRIMARY_METRICS = ("walk_forward_rank_ic_mean", "kfold_rank_ic_mean", "cv_rank_ic_mean", "oof_sharpe", "dsr")


@dataclass(frozen=True)
class Candidate:
    kind: str
    walk_forward_rank_ic: Sequence[float]
    kfold_rank_ic: Sequence[float] = ()
    gap: float = math.nan
    oof_returns: pd.Series | None = None  # daily net long-short returns on the walk-forward validation dates
    holdout_rank_ic: float = math.nan
    holdout_sharpe: float = math.nan
    fit_seconds: float = math.nan
    configurations: int = 1  # configurations tried to produce it (a study's trials; 1 for a fixed rule)
    members: tuple[str, ...] = ()
    oof_scores: pd.Series | None = None  # per-date out-of-fold rank IC on the walk-forward validation dates

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"candidate kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.walk_forward_rank_ic) == 0:
            raise ValueError("a candidate needs at least one walk-forward fold score")


@dataclass(frozen=True)
class SelectionCriteria:
    """The declared selection rule. ``None`` switches a filter off."""

    primary: str = "walk_forward_rank_ic_mean"
    min_positive_folds: float | None = 0.5  # share of walk-forward folds with a positive rank IC
    max_gap: float | None = 0.2  # mean train - validation rank IC
    min_dsr: float | None = None  # deflated Sharpe of the OOF long-short returns, deflated over every configuration tried
    max_pbo: float | None = None  # PBO of the whole candidate set: above it no pick is trusted
    max_fit_seconds: float | None = None
    tie_tolerance: float = 0.001  # primary values this close to the best tie; the cheaper candidate wins

    def validate(self) -> SelectionCriteria:
        if self.primary not in PRIMARY_METRICS:
            raise ValueError(f"primary metric must be one of {PRIMARY_METRICS}, got {self.primary!r}")
        for name in ("min_positive_folds", "min_dsr", "max_pbo"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (or None), got {value}")
        if self.max_gap is not None and not self.max_gap >= 0:
            raise ValueError(f"max_gap must be >= 0 (or None), got {self.max_gap}")
        if self.max_fit_seconds is not None and not self.max_fit_seconds > 0:
            raise ValueError(f"max_fit_seconds must be > 0 (or None), got {self.max_fit_seconds}")
        if not self.tie_tolerance >= 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {self.tie_tolerance}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    winner: str | None
    reason: str
    failures: dict[str, list[str]] = field(default_factory=dict)  # candidate -> criteria it failed
    ties: list[str] = field(default_factory=list)
    pbo: float = math.nan
    validated: bool = False
    validation: str = "not validated"

    def to_dict(self) -> dict:
        return asdict(self)


def _psr(returns: pd.Series | None, periods_per_year: int) -> float:
    """Probabilistic Sharpe (against 0) of OOF returns; NaN when there are too few of them."""
    if returns is None:
        return math.nan
    clean = returns.dropna()
    if len(clean) < 8 or not float(clean.std()) > 0:
        return math.nan
    return float(of.probabilistic_sharpe_ratio(clean.to_numpy(), periods_per_year=periods_per_year))


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def leaderboard_table(candidates: Mapping[str, Candidate], periods_per_year: int = 252) -> tuple[pd.DataFrame, float]:
    """One row per candidate, plus the PBO of the non-baseline candidates' OOF returns (NaN with
    fewer than 2 such candidates or too few dates). The deflated Sharpe of each candidate is
    deflated over every configuration tried across the whole search (all study trials and every
    ensemble rule), with the Sharpe variance measured across the candidates."""
    if not candidates:
        raise ValueError("the leaderboard needs at least one candidate")
    rows = {}
    for name, c in candidates.items():
        wf = np.asarray(c.walk_forward_rank_ic, dtype=float)
        kf = np.asarray(c.kfold_rank_ic, dtype=float)
        both = np.concatenate([wf, kf])
        rows[name] = {
            "kind": c.kind,
            "walk_forward_rank_ic_mean": float(np.nanmean(wf)),
            "walk_forward_rank_ic_std": _std(wf),
            "positive_folds": float(np.mean(wf > 0)),
            "kfold_rank_ic_mean": float(np.nanmean(kf)) if len(kf) else math.nan,
            "cv_rank_ic_mean": float(np.nanmean(both)),
            "gap": float(c.gap),
            "oof_sharpe": of.sharpe_ratio(c.oof_returns.dropna(), periods_per_year) if c.oof_returns is not None else math.nan,
            "psr": _psr(c.oof_returns, periods_per_year),
            "holdout_rank_ic": float(c.holdout_rank_ic),
            "holdout_sharpe": float(c.holdout_sharpe),
            "fit_seconds": float(c.fit_seconds),
            "configurations": int(c.configurations),
            "members": ",".join(c.members),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "candidate"
    searched = [n for n, c in candidates.items() if c.kind != "baseline" and c.oof_returns is not None]
    returns = pd.concat({n: candidates[n].oof_returns for n in searched}, axis=1).fillna(0.0) if searched else pd.DataFrame()
    table["dsr"] = math.nan
    pbo = math.nan
    if len(searched) >= 2 and len(returns) >= 8:
        n_trials = int(sum(candidates[n].configurations for n in searched))
        try:
            variance = of.trial_sharpe_variance(returns, periods_per_year)
        except ValueError:
            variance = math.nan
        if math.isfinite(variance):
            for name in searched:
                table.loc[name, "dsr"] = of.deflated_sharpe_ratio(returns[name].to_numpy(), n_trials=n_trials, sr_variance=variance)
    scored = [n for n in searched if candidates[n].oof_scores is not None]
    if len(scored) >= 2 and len(scored) == len(searched):
        # The PBO of the candidate set in the metric the rule ranks by (per-date rank IC, ranked by its mean),
        # near-duplicates merged: the same statistic the promotion evidence computes over every trial.
        scores = pd.concat({n: candidates[n].oof_scores for n in scored}, axis=1)
        pbo, _ = of.trial_set_pbo(scores)
    elif len(searched) >= 2 and len(returns) >= 8:
        n_blocks = max(2, min(16, len(returns) // 20 // 2 * 2))
        pbo = float(of.probability_of_backtest_overfitting(returns.to_numpy(), n_splits=n_blocks).pbo)
    return table, pbo


@dataclass(frozen=True)
class NestedScores:
    """A tuned family scored the way an ensemble is: each walk-forward fold by the configuration
    chosen on the earlier folds only."""

    fold_scores: list[float]
    date_scores: pd.Series  # per-date validation score of the configuration used on each date
    chosen: list[int]  # trial number used on each fold


def nested_walk_forward(study: Mapping) -> NestedScores | None:
    """Nested walk-forward scores of a study's selection procedure, from the trials it ran: fold 1
    is scored by the first trial (its configuration depends on no score: the family defaults when
    they were enqueued), fold k >= 2 by the trial with the best mean score over folds 1..k-1 among
    the trials that ran fold k (whether a trial ran fold k depends on its earlier folds only). So no
    fold's score comes from a choice that saw that fold, unlike the best trial's own mean, which is
    the maximum of N noisy estimates on the very folds that picked it. (The sampler proposed later
    trials after seeing earlier trials' full scores; the choice among them is what is nested here.)
    None when the study holds no per-fold trial record or searched on another scheme."""
    trials = [t for t in study.get("trials", []) if t.get("fold_scores")]
    if not trials or study.get("scheme", "walk_forward") != "walk_forward":
        return None
    trials = sorted(trials, key=lambda t: t["number"])
    n_folds = max(len(t["fold_scores"]) for t in trials)
    dates = pd.DatetimeIndex(pd.to_datetime(study.get("oof_dates", [])))
    starts = pd.DatetimeIndex(pd.to_datetime(study.get("fold_test_starts", [])))
    per_date = study.get("trial_date_scores", {})
    fold_scores, chosen, parts = [], [], []
    for k in range(n_folds):
        ran = [t for t in trials if len(t["fold_scores"]) > k]
        if k == 0:
            pick = ran[0]
        else:
            pick = max(ran, key=lambda t: (float(np.mean(t["fold_scores"][:k])), -t["number"]))
        fold_scores.append(float(pick["fold_scores"][k]))
        chosen.append(int(pick["number"]))
        column = per_date.get(f"trial_{pick['number']}")
        if column is not None and len(starts) == n_folds and len(dates) == len(column):
            end = starts[k + 1] if k + 1 < n_folds else dates.max() + pd.Timedelta(days=1)
            mask = (dates >= starts[k]) & (dates < end)
            values = np.array([np.nan if v is None else v for v in column], dtype=float)
            parts.append(pd.Series(values[mask], index=dates[mask]))
    date_scores = pd.concat(parts).rename("score") if parts else pd.Series(dtype=float, name="score")
    return NestedScores(fold_scores, date_scores, chosen)


def _failures(row: pd.Series, criteria: SelectionCriteria) -> list[str]:
    out = []
    if not math.isfinite(row[criteria.primary]):
        out.append(f"{criteria.primary} is undefined")
    if criteria.min_positive_folds is not None and not row["positive_folds"] >= criteria.min_positive_folds:
        out.append(f"positive in {row['positive_folds']:.0%} of walk-forward folds < {criteria.min_positive_folds:.0%}")
    if criteria.max_gap is not None and not row["gap"] <= criteria.max_gap:
        out.append(f"train/validation gap {row['gap']:.4f} > {criteria.max_gap}")
    if criteria.min_dsr is not None and not row["dsr"] >= criteria.min_dsr:
        out.append(f"deflated Sharpe {row['dsr']:.3f} < {criteria.min_dsr}")
    if criteria.max_fit_seconds is not None and not row["fit_seconds"] <= criteria.max_fit_seconds:
        out.append(f"fit time {row['fit_seconds']:.1f} s > {criteria.max_fit_seconds} s")
    return out


def select(table: pd.DataFrame, criteria: SelectionCriteria, pbo: float = math.nan) -> Selection:
    """Apply the rule to the leaderboard (baselines are references, never picked). Among the
    candidates that pass every filter, the best primary metric wins; candidates within
    ``tie_tolerance`` of it tie, and the tie goes to the lowest fit time, then to a single model
    over an ensemble (fewer moving parts), then to the name."""
    criteria.validate()
    contenders = table[table["kind"] != "baseline"]
    if contenders.empty:
        raise ValueError("the leaderboard has no model or ensemble candidate, only baselines")
    failures = {name: _failures(row, criteria) for name, row in contenders.iterrows()}
    if criteria.max_pbo is not None and math.isfinite(pbo) and pbo > criteria.max_pbo:
        return Selection(
            None, f"PBO {pbo:.2f} of the candidate set is above {criteria.max_pbo}: the CV ranking of the candidates "
            "does not carry out of sample, so no pick is trusted", failures, pbo=pbo,
        )
    eligible = contenders.loc[[n for n, f in failures.items() if not f]]
    if eligible.empty:
        return Selection(None, "no candidate passes every criterion: " + "; ".join(
            f"{n}: {', '.join(f)}" for n, f in failures.items()), failures, pbo=pbo)
    best = float(eligible[criteria.primary].max())
    tied = eligible[eligible[criteria.primary] >= best - criteria.tie_tolerance]
    order = tied.assign(_single=(tied["kind"] != "model").astype(int), _name=tied.index).sort_values(
        ["fit_seconds", "_single", "_name"], na_position="last")
    winner = str(order.index[0])
    value = float(eligible.loc[winner, criteria.primary])
    reason = f"{winner} has the best {criteria.primary} ({value:.4f}) of {len(eligible)} candidate(s) passing every criterion"
    if len(tied) > 1:
        others = [n for n in tied.index if n != winner]
        reason = (f"{winner} ({value:.4f}) ties with {', '.join(others)} within {criteria.tie_tolerance} on "
                  f"{criteria.primary} and wins on fit time ({eligible.loc[winner, 'fit_seconds']:.1f} s)")
    return Selection(winner, reason, failures, ties=[str(n) for n in tied.index] if len(tied) > 1 else [], pbo=pbo)


def validate_against_baseline(table: pd.DataFrame, selection: Selection, baseline: str, metric: str = "holdout_rank_ic") -> Selection:
    """Read the holdout once: the pick must beat ``baseline`` on ``metric``, else it is not validated."""
    if baseline not in table.index:
        raise ValueError(f"baseline {baseline!r} is not on the leaderboard ({list(table.index)})")
    reference = float(table.loc[baseline, metric])
    if selection.winner is None:
        selection.validated, selection.validation = False, "nothing was selected, so nothing is validated"
        return selection
    value = float(table.loc[selection.winner, metric])
    passed = math.isfinite(value) and (not math.isfinite(reference) or value > reference)
    verb = "beats" if passed else "does not beat"
    selection.validated = bool(passed)
    selection.validation = (f"{selection.winner} {verb} the baseline {baseline} on {metric}: {value:.4f} vs {reference:.4f}"
                            + ("" if passed else "; nothing new is promoted"))
    return selection


def candidate_statistics(table: pd.DataFrame, name: str, pbo: float) -> dict[str, float]:
    """The overfitting statistics of one leaderboard candidate, keyed as
    :func:`plml_assets.lib.validation.overfitting.verdict` reads them: the PBO of the candidate set it was
    picked from, its OOF deflated Sharpe (deflated over every configuration tried) and probabilistic
    Sharpe, its mean train/validation gap, and the share of its walk-forward folds not validating
    above zero (an undefined fold counts as not positive). The same statistics exist for a single
    model and an ensemble, so one verdict rule judges both."""
    if name not in table.index:
        raise ValueError(f"{name!r} is not on the leaderboard ({list(table.index)})")
    row = pd.to_numeric(table.loc[name].reindex(["dsr", "psr", "gap", "positive_folds", "oof_sharpe"]), errors="coerce")
    return {
        "pbo": float(pbo) if pbo is not None else math.nan,
        "dsr": float(row["dsr"]),
        "psr": float(row["psr"]),
        "gap_mean": float(row["gap"]),
        "share_valid_below_zero": float(1.0 - row["positive_folds"]),
        "oof_sharpe": float(row["oof_sharpe"]),
    }


def fold_rank_ics(scores: pd.Series, y: pd.Series, fold_of_row: pd.Series) -> list[float]:
    """Mean per-date rank IC of ``scores`` on each fold's rows (folds in ascending order)."""
    from plml_assets.lib.validation.metrics import evaluate_predictions

    frame = pd.DataFrame({"score": scores, "y": y, "fold": fold_of_row}).dropna(subset=["fold"])
    return [
        float(evaluate_predictions(block["y"].to_numpy(), block["score"].to_numpy(), block.index.get_level_values("date"))["rank_ic"])
        for _, block in frame.groupby("fold", sort=True)
    ]


def long_short_returns(scores: pd.Series, prices: pd.DataFrame, *, quantile: float = 0.2, cost_bps: float = 5.0,
                       holding_days: int = 1, execution_lag: int = 0) -> tuple[pd.Series, float]:
    """Daily net returns of the long-short quantile portfolio traded on ``scores`` (in
    ``holding_days`` overlapping tranches, ``execution_lag`` dates after each signal) over the dates
    they cover, and its annualized net Sharpe on those dates."""
    from plml_assets.lib.backtest import engine as bt

    dates = scores.index.get_level_values("date").unique()
    run = bt.run_backtest(scores, prices, construction="long_short", quantile=quantile, cost_bps=cost_bps, dates=dates,
                          holding_days=holding_days, execution_lag=execution_lag)
    net = run.result["net_return"]
    net = net[net.index.isin(dates)]
    return net, float(of.sharpe_ratio(net, 252)) if len(net) > 2 else math.nan
