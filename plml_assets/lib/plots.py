"""PNG plots (matplotlib, Agg) for asset metadata and MLflow runs."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Inline a PNG in markdown metadata so the Dagster UI shows it without a file server."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def fold_metrics_plot(cv_results: pd.DataFrame, metric: str = "rank_ic") -> bytes:
    schemes = list(dict.fromkeys(cv_results["scheme"]))
    fig, axes = plt.subplots(1, len(schemes), figsize=(5 * len(schemes), 3.2), squeeze=False, sharey=True)
    for ax, scheme in zip(axes[0], schemes):
        block = cv_results[cv_results["scheme"] == scheme]
        x = np.arange(len(block))
        ax.bar(x, block[f"valid_{metric}"], color="tab:blue", label=f"validation {metric}")
        ax.plot(x, block[f"train_{metric}"], "o", color="tab:red", label=f"train {metric}")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, [f"{r.fold}\n{r.test_start[:7]}" for r in block.itertuples()], fontsize=7)
        ax.set_title(f"{scheme}: mean {block[f'valid_{metric}'].mean():.4f}")
        ax.set_xlabel("fold (test start)")
    axes[0][0].set_ylabel(metric)
    axes[0][0].legend(fontsize=7)
    return to_png(fig)


def cumulative_ic_plot(series: dict[str, pd.Series], title: str) -> bytes:
    """Cumulative sum of per-date rank IC: a rising line is a signal that keeps working."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, s in series.items():
        s = s.dropna()
        ax.plot(pd.to_datetime(s.index), s.cumsum().to_numpy(), label=f"{name} (mean {s.mean():.4f})")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title(title)
    ax.set_ylabel("cumulative rank IC")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return to_png(fig)


def importance_plot(importance: pd.Series, top: int = 20) -> bytes:
    top_s = importance.sort_values(ascending=True).tail(top)
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(top_s) + 1))
    ax.barh(top_s.index, top_s.to_numpy(), color="tab:green")
    ax.set_xlabel("share of total gain")
    ax.set_title(f"top {len(top_s)} features")
    ax.tick_params(axis="y", labelsize=7)
    return to_png(fig)


def histogram_plot(values: pd.Series, title: str, xlabel: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(values.dropna(), bins=max(5, len(values)), color="tab:blue")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return to_png(fig)


def family_comparison_plot(per_fold: pd.DataFrame, holdout: pd.Series, metric: str = "rank_ic") -> bytes:
    """Per-fold validation ``metric`` of each family (one panel per CV scheme: box plus the folds as
    points) with the holdout value as a diamond: the spread shows how much of a gap is fold noise."""
    schemes = list(dict.fromkeys(per_fold["scheme"]))
    families = list(dict.fromkeys(per_fold["family"]))
    fig, axes = plt.subplots(1, len(schemes), figsize=(4.5 * len(schemes), 3.4), squeeze=False, sharey=True)
    for ax, scheme in zip(axes[0], schemes):
        block = per_fold[per_fold["scheme"] == scheme]
        values = [block.loc[block["family"] == f, f"valid_{metric}"].to_numpy() for f in families]
        ax.boxplot(values, widths=0.5, showfliers=False)
        for i, v in enumerate(values, start=1):
            ax.plot(np.full(len(v), i) + np.linspace(-0.12, 0.12, len(v)), v, "o", color="tab:blue", ms=3, alpha=0.7)
            if families[i - 1] in holdout:
                ax.plot(i, holdout[families[i - 1]], "D", color="tab:red", ms=6, label="holdout" if i == 1 else None)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(1, len(families) + 1), families)
        ax.set_title(f"{scheme} folds")
    axes[0][0].set_ylabel(f"validation {metric}")
    axes[0][0].legend(fontsize=7)
    return to_png(fig)


def importance_stability_plot(summary_by_family: Mapping[str, pd.DataFrame], top: int = 15) -> bytes:
    """Mean within-date permutation importance over CV folds (bars) with its std over folds (error
    bars), the ``top`` features of each family, one panel per family: a bar whose error bar crosses
    zero is a feature the folds do not agree on. Takes ``summarize_importances`` tables."""
    families = list(summary_by_family) or ["(none)"]
    rows = max([min(top, len(s)) for s in summary_by_family.values()] + [1])
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 0.28 * rows + 1.4), squeeze=False)
    for ax, family in zip(axes[0], families):
        summary = summary_by_family.get(family, pd.DataFrame())
        if len(summary) == 0 or "permutation_mean" not in summary:
            ax.text(0.5, 0.5, "no importances", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(family)
            continue
        block = summary.dropna(subset=["permutation_mean"]).sort_values("permutation_mean", ascending=False).head(top)
        block = block.iloc[::-1]  # largest on top
        std = block["permutation_std"].fillna(0.0).to_numpy() if "permutation_std" in block else None
        ax.barh([str(f) for f in block.index], block["permutation_mean"].to_numpy(), xerr=std,
                color="tab:green", ecolor="black", capsize=2)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{family}: top {len(block)} features")
        ax.set_xlabel("rank-IC drop when shuffled within date")
        ax.tick_params(axis="y", labelsize=7)
    return to_png(fig)


def drift_plot(feature_table: pd.DataFrame, realized_ic: pd.Series | None, thresholds, top: int = 15) -> bytes:
    """Left: PSI of the ``top`` most drifted features (a ``feature_drift`` table) with the warning and
    retrain levels of ``thresholds`` (a ``DriftThresholds``); right: cumulative realized rank IC of the
    champion over dates, when given: a line that stops rising is a signal that stopped working."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.28 * max(min(top, len(feature_table)), 6) + 1.6))
    psi = pd.to_numeric(feature_table["psi"], errors="coerce").dropna() if "psi" in feature_table else pd.Series(dtype=float)
    block = psi.sort_values(ascending=False).head(top).iloc[::-1]  # largest on top
    if len(block):
        colors = ["tab:red" if v > thresholds.psi_retrain else "tab:orange" if v > thresholds.psi_warn else "tab:blue"
                  for v in block.to_numpy()]
        left.barh([str(f) for f in block.index], block.to_numpy(), color=colors)
        left.tick_params(axis="y", labelsize=7)
    else:
        left.text(0.5, 0.5, "no feature PSI", ha="center", va="center", transform=left.transAxes)
    left.axvline(thresholds.psi_warn, color="tab:orange", ls="--", lw=1, label=f"warn {thresholds.psi_warn}")
    left.axvline(thresholds.psi_retrain, color="tab:red", ls="--", lw=1, label=f"retrain {thresholds.psi_retrain}")
    left.set_xlabel("PSI (new data vs the champion's training window)")
    left.set_title(f"top {len(block)} features by PSI")
    left.legend(fontsize=7, loc="lower right")
    ic = realized_ic.dropna() if realized_ic is not None else pd.Series(dtype=float)
    if len(ic):
        right.plot(pd.to_datetime(ic.index), ic.cumsum().to_numpy(), color="tab:blue")
        right.set_title(f"realized rank IC: mean {ic.mean():.4f} over {len(ic)} dates")
        right.tick_params(axis="x", labelrotation=30)
    else:
        right.text(0.5, 0.5, "no labelled dates yet", ha="center", va="center", transform=right.transAxes)
        right.set_title("realized rank IC")
    right.axhline(0, color="black", lw=0.8)
    right.set_ylabel("cumulative rank IC")
    return to_png(fig)
