"""Plots of contributions: the bar and beeswarm summaries, a waterfall per name, the change of the
top features across registered versions. PNG bytes (``lib.plots.to_png``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from plml_assets.lib.explain.contributions import BASE, PREDICTION, RESIDUAL, feature_columns, mean_abs
from plml_assets.lib.plots import plt, to_png


def summary_plot(contributions: pd.DataFrame, features: pd.DataFrame, title: str, top: int = 15) -> bytes:
    """Left: mean |contribution| of the ``top`` features. Right: a beeswarm, one dot per row (at
    most 4,000, seeded), x its contribution, colour its feature value's percentile among the rows."""
    profile = mean_abs(contributions).iloc[:top][::-1]
    fig, (bar, swarm) = plt.subplots(1, 2, figsize=(12, 0.35 * len(profile) + 1.6), sharey=True,
                                     gridspec_kw={"width_ratios": [1, 2]})
    y = np.arange(len(profile))
    bar.barh(y, profile.to_numpy(), color="tab:blue")
    bar.set_yticks(y, list(profile.index), fontsize=8)
    bar.set_xlabel("mean |contribution|")
    rows = contributions.index
    if len(rows) > 4000:
        rows = rows[np.sort(np.random.default_rng(0).choice(len(rows), 4000, replace=False))]
    jitter = np.random.default_rng(1).uniform(-0.3, 0.3, len(rows))
    for k, feature in enumerate(profile.index):
        values = contributions.loc[rows, feature].to_numpy()
        raw = features[feature].reindex(rows) if feature in features else pd.Series(np.nan, index=rows)
        colour = raw.rank(pct=True).fillna(0.5).to_numpy()
        points = swarm.scatter(values, k + jitter, c=colour, cmap="coolwarm", s=4, alpha=0.6, vmin=0, vmax=1)
    swarm.axvline(0, color="black", lw=0.6)
    swarm.set_xlabel("contribution to the score")
    if len(profile):
        fig.colorbar(points, ax=swarm, label="feature value percentile")
    fig.suptitle(title)
    return to_png(fig)


def waterfall_plot(contributions: pd.DataFrame, date: pd.Timestamp, title: str, names: int = 3, top: int = 8) -> bytes:
    """For the ``names`` best-scored symbols of ``date``: from the base value through their ``top``
    largest contributions (the rest summed as "other features") to the score."""
    day = contributions[contributions.index.get_level_values("date") == date].sort_values(PREDICTION, ascending=False)
    day = day.iloc[:names]
    fig, axes = plt.subplots(1, max(len(day), 1), figsize=(6 * max(len(day), 1), 0.4 * (top + 3) + 1), squeeze=False)
    fig.subplots_adjust(wspace=0.75)
    for ax, (key, row) in zip(axes[0], day.iterrows()):
        parts = row[feature_columns(contributions)]
        largest = parts.abs().sort_values(ascending=False).index[:top]
        steps = [(str(f), float(parts[f])) for f in largest]
        rest = float(parts.drop(largest).sum()) + (float(row[RESIDUAL]) if RESIDUAL in row else 0.0)
        steps.append(("other features" + (" + residual" if RESIDUAL in row else ""), rest))
        level = float(row[BASE])
        labels, levels = ["base value"], [0.0, level]
        ax.barh(0, level, color="grey")
        for k, (label, value) in enumerate(steps, start=1):
            ax.barh(k, value, left=level, color="tab:red" if value > 0 else "tab:blue")
            level += value
            labels.append(label)
            levels.append(level)
        ax.barh(len(steps) + 1, float(row[PREDICTION]), color="black")
        labels.append("score")
        levels.append(float(row[PREDICTION]))
        pad = 0.05 * max(max(levels) - min(levels), 1e-12)
        ax.set_xlim(min(levels) - pad, max(levels) + pad)  # barh's left= does not widen the autoscale
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{key[1]}: score {float(row[PREDICTION]):.4g}", fontsize=9)
    fig.suptitle(f"{title}, {pd.Timestamp(date).date()}")
    return to_png(fig)


def version_profiles_plot(profiles: Mapping[str, pd.Series], top: int = 12, title: str = "top features across versions",
                          xlabel: str = "registered version") -> bytes:
    """Mean |contribution| share of the features that were in any version's top ``top``, one line
    per feature across the versions (oldest left)."""
    versions = list(profiles)
    shares = pd.DataFrame({v: p / max(float(p.sum()), 1e-300) for v, p in profiles.items()}).fillna(0.0)
    keep = sorted(set().union(*(set(shares[v].sort_values(ascending=False).index[:top]) for v in versions)))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(versions) + 3), 4.5))
    for feature in keep:
        ax.plot(range(len(versions)), shares.loc[feature, versions].to_numpy(), marker="o", label=feature)
    ax.set_xticks(range(len(versions)), versions)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of mean |contribution|")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title)
    return to_png(fig)
