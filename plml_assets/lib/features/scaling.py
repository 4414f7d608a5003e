"""Feature scaling fitted on training rows only and carried inside a model.

A :class:`FeatureScaler` learns its statistics from the rows given to :meth:`FeatureScaler.fit`
(a model's training rows, never its validation or test rows) and applies exactly that transform
to any later frame, so serving reproduces training. Its state is plain JSON
(:meth:`FeatureScaler.to_dict` / :meth:`FeatureScaler.from_dict`), saved beside the model.

Methods (:data:`SCALINGS`):

* ``"none"``: identity.
* ``"robust_z"``: per column ``(x - median) / (IQR / 1.349)`` (the IQR of a normal is 1.349 sd; an
  IQR of 0 gives a scale of 1), clipped to ``+/-clip``. Median and IQR of the fitting rows.
* ``"rank_gauss"``: per column, ``n_quantiles`` quantiles of the fitting rows; a value maps to its
  interpolated empirical CDF, clipped to ``[1/(2n), 1 - 1/(2n)]`` (``n``: the quantiles kept), then
  to the standard normal quantile. Monotone; values outside the training range map to the extreme
  quantiles. Ties are split as scikit-learn's ``QuantileTransformer`` does (the mean of the
  interpolation from below and from above), so a repeated training value maps to its mid-rank.
* ``"date_rank"``: per date (the ``date`` level of the panel index), the cross-sectional rank
  scaled to ``[-0.5, 0.5]`` (ties averaged; a date with one known value gives 0). Stateless:
  ``fit`` records the columns only, and a row's value depends on the other rows of its date in the
  frame transformed, so score whole cross-sections.

``+/-inf`` counts as missing for the statistics (and lands on the clip or the extreme quantile,
or ranks last/first in its date); NaN stays NaN in every method (a model decides
what a missing value means). ``transform`` returns the fitted columns, in fitting order, as
float32, on the input's index; the input may carry extra columns (dropped) but must hold every
fitted one.
"""

from __future__ import annotations

import warnings
from typing import Any, Self

import numpy as np
import pandas as pd

SCALINGS = ("none", "robust_z", "rank_gauss", "date_rank")
#: IQR of the standard normal: IQR / 1.349 estimates the standard deviation.
NORMAL_IQR = 1.349


def _finite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, np.nan)


class FeatureScaler:
    """Per-column feature scaling with statistics from the fitting rows only (see the module)."""

    def __init__(self, method: str = "none", clip: float = 5.0, n_quantiles: int = 256) -> None:
        if method not in SCALINGS:
            raise ValueError(f"unknown scaling method {method!r}; known: {list(SCALINGS)}")
        if not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip > 0):
            raise ValueError(f"clip must be a number > 0; got {clip!r}")
        if not (isinstance(n_quantiles, (int, np.integer)) and not isinstance(n_quantiles, bool) and n_quantiles >= 2):
            raise ValueError(f"n_quantiles must be an integer >= 2; got {n_quantiles!r}")
        self.method = method
        self.clip = float(clip)
        self.n_quantiles = int(n_quantiles)

    def __repr__(self) -> str:
        return f"FeatureScaler(method={self.method!r}, clip={self.clip}, n_quantiles={self.n_quantiles})"

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "columns_")

    # --- fit -------------------------------------------------------------------------------------

    def fit(self, X: pd.DataFrame) -> Self:
        """Learn the statistics of ``X``'s rows (the training rows) per column."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"FeatureScaler.fit takes a DataFrame; got {type(X).__name__}")
        if len(X) == 0:
            raise ValueError(f"FeatureScaler({self.method!r}).fit: X has no rows; fit on the training rows")
        columns = [str(c) for c in X.columns]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ValueError(f"FeatureScaler.fit: column name(s) {repeated[:10]} appear more than once")
        if self.method == "date_rank":
            _date_level(X)
        values = _finite(X.to_numpy(dtype=np.float64)) if self.method in ("robust_z", "rank_gauss") else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: handled below
            if self.method == "robust_z":
                center = np.nanmedian(values, axis=0)
                q25, q75 = np.nanquantile(values, [0.25, 0.75], axis=0)
                scale = (q75 - q25) / NORMAL_IQR
                self.center_ = np.where(np.isfinite(center), center, 0.0)
                self.scale_ = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
            elif self.method == "rank_gauss":
                n = min(self.n_quantiles, len(X))
                self.references_ = np.linspace(0.0, 1.0, n)
                quantiles = np.nanquantile(values, self.references_, axis=0).T  # (columns, n)
                self.quantiles_ = np.where(np.isfinite(quantiles), quantiles, 0.0)
        self.columns_ = columns
        return self

    # --- transform -------------------------------------------------------------------------------

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """The fitted transform of ``X``: fitted columns in fitting order, float32, ``X``'s index."""
        if not self.is_fitted:
            raise RuntimeError(f"{self!r} is not fitted: call fit() first")
        names = [str(c) for c in X.columns]
        where = {name: k for k, name in enumerate(names)}
        missing = [c for c in self.columns_ if c not in where]
        if missing:
            raise ValueError(
                f"FeatureScaler({self.method!r}).transform: X lacks fitted column(s) {missing[:10]}"
                + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            )
        positions = [where[c] for c in self.columns_]
        frame = X.iloc[:, positions]
        if self.method == "date_rank":
            out = _date_rank(frame)
        else:
            values = frame.to_numpy(dtype=np.float64)
            if self.method == "robust_z":
                with np.errstate(invalid="ignore"):
                    out = np.clip((values - self.center_) / self.scale_, -self.clip, self.clip)
            elif self.method == "rank_gauss":
                out = self._rank_gauss(values)
            else:
                out = values
        return pd.DataFrame(np.asarray(out, dtype=np.float32), index=X.index, columns=frame.columns)

    def fit_transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.fit(X).transform(X)

    def _rank_gauss(self, values: np.ndarray) -> np.ndarray:
        from scipy.special import ndtri  # imported when used: ~0.2 s, and only rank_gauss needs it

        refs = self.references_
        bound = 1.0 / (2 * len(refs))
        out = np.full(values.shape, np.nan)
        for j in range(values.shape[1]):
            x, q = values[:, j], self.quantiles_[j]
            known = ~np.isnan(x)
            xk = x[known]
            # Interpolate from below and from above and average: a run of equal quantiles (a
            # repeated training value) maps to the middle of its CDF range.
            cdf = 0.5 * (np.interp(xk, q, refs) - np.interp(-xk, -q[::-1], -refs[::-1]))
            out[known, j] = ndtri(np.clip(cdf, bound, 1.0 - bound))
        return out

    # --- state -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The settings and fitted state as JSON-serializable values (floats round-trip exactly)."""
        state: dict[str, Any] = {"method": self.method, "clip": self.clip, "n_quantiles": self.n_quantiles}
        if self.is_fitted:
            state["columns"] = list(self.columns_)
            if self.method == "robust_z":
                state["center"] = [float(v) for v in self.center_]
                state["scale"] = [float(v) for v in self.scale_]
            elif self.method == "rank_gauss":
                state["references"] = [float(v) for v in self.references_]
                state["quantiles"] = [[float(v) for v in row] for row in self.quantiles_]
        return state

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureScaler:
        """The scaler :meth:`to_dict` described, fitted if it was."""
        scaler = cls(d.get("method", "none"), d.get("clip", 5.0), d.get("n_quantiles", 256))
        if "columns" in d:
            n = len(d["columns"])
            try:
                if scaler.method == "robust_z":
                    scaler.center_ = np.asarray(d["center"], dtype=np.float64).reshape(n)
                    scaler.scale_ = np.asarray(d["scale"], dtype=np.float64).reshape(n)
                elif scaler.method == "rank_gauss":
                    scaler.references_ = np.asarray(d["references"], dtype=np.float64)
                    scaler.quantiles_ = np.asarray(d["quantiles"], dtype=np.float64).reshape(n, len(scaler.references_))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"incomplete or malformed {scaler.method!r} scaler state: {exc}") from exc
            scaler.columns_ = [str(c) for c in d["columns"]]
        return scaler

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureScaler) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable


def _date_level(X: pd.DataFrame) -> pd.Index:
    if "date" not in (X.index.names or []):
        raise ValueError(
            f"date_rank scaling ranks each date's cross-section: X needs an index with a 'date' level; "
            f"got index names {list(X.index.names)}"
        )
    return X.index.get_level_values("date")


def _date_rank(X: pd.DataFrame) -> np.ndarray:
    dates = _date_level(X)
    # +/-inf ranks last/first among its date's values; NaN is not ranked and not counted.
    values = pd.DataFrame(X.to_numpy(dtype=np.float64))
    groups = values.groupby(np.asarray(dates), sort=False)
    rank = groups.rank(method="average").to_numpy()
    count = groups.transform("count").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (rank - 1.0) / (count - 1.0) - 0.5
    return np.where(count > 1, scaled, np.where(np.isnan(rank), np.nan, 0.0))


def bin_by_training_quantiles(train: pd.DataFrame, *others: pd.DataFrame, levels: int = 64) -> list[pd.DataFrame]:
    """Each column of ``train`` and of ``others`` as its bin among ``levels`` quantiles of the
    training rows alone (NaN kept, float32). Features of at most 255 distinct values are binned the
    same by every booster's histograms on every Dask worker, so a distributed fit on them is the
    local fit (benchmarks/scale_out.py, plml_assets_tests/distributed)."""
    out = []
    edges = {c: np.unique(np.nanquantile(train[c], np.linspace(0, 1, levels + 1)[1:-1])) for c in train.columns}
    for frame in (train, *others):
        binned = frame.copy()
        for c in frame.columns:
            binned[c] = np.where(frame[c].isna(), np.nan, np.searchsorted(edges[c], frame[c])).astype("float32")
        out.append(binned)
    return out
