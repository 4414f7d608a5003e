"""A model card for every registered version: what it is, what it was trained on, how it was
judged, and why it was (not) promoted, in one markdown page (``model_card.md`` on the version's run)
and a paragraph (the version's description).

The facts come from the assets that produced them (the leaderboard, the validation report, the
backtest evidence, the explanations, the gate); this module only renders them, so a card never says
more than was measured. A missing fact is printed as missing, not guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CARD_ARTIFACT = "model_card.md"
#: the version's mean |contribution| per feature on its holdout (``{"mean_abs": {feature: value}, ...}``)
PROFILE_ARTIFACT = "shap_profile.json"


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _share(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * float(value):.0f} %"


def standard_error(mean: float | None, ir: float | None, n_dates: float | None, horizon: int) -> float | None:
    """Standard error of a mean per-date IC from its information ratio (mean / std) over ``n_dates``
    dates whose labels overlap by ``horizon`` days (about ``n_dates / horizon`` independent dates)."""
    if mean is None or ir is None or not n_dates or not ir or not all(map(math.isfinite, (mean, ir, n_dates))):
        return None
    return abs(mean / ir) / math.sqrt(max(n_dates / max(horizon, 1), 1.0))


def _table(rows: Sequence[tuple[str, str]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def render_card(facts: Mapping[str, Any]) -> str:
    """The markdown card. ``facts``: see :func:`plml_assets.defs.registry.assets.card_facts`."""
    f = facts
    data, cv, evidence, backtest = (f.get(k) or {} for k in ("data", "cv", "evidence", "backtest"))
    gate = f.get("gate") or {}
    lines = [
        f"# {f['model']} v{f['version']}: {f['candidate']}",
        "",
        f"{f.get('description', '')}",
        "",
        "## Data",
        _table([
            ("prices", f"{data.get('first_date', 'n/a')} .. {data.get('last_date', 'n/a')}, {_num(data.get('symbols'))} symbols, "
                       f"{_num(data.get('rows'))} rows"),
            ("data fingerprint", f"`{data.get('fingerprint', 'n/a')}`"),
            ("training window", f"{data.get('train_start', 'n/a')} .. {data.get('train_end', 'n/a')}"),
            ("holdout window", f"{data.get('holdout_start', 'n/a')} .. {data.get('holdout_end', 'n/a')} (never seen by any choice)"),
            ("label", f"excess forward return over {f.get('horizon', 'n/a')} trading days (known {f.get('horizon', 'n/a')} days later; "
                      "folds purged and embargoed by it)"),
            ("drift baseline", f"the training window's features: drift_metrics compares new data with "
                               f"{data.get('train_start', 'n/a')} .. {data.get('train_end', 'n/a')}"),
        ]),
        "",
        "## Model",
        _table([
            ("kind", f"{f.get('kind', 'n/a')} ({f.get('family', 'n/a')})"),
            ("members", ", ".join(f.get("members") or []) or "none (a single model)"),
            ("parameters", "; ".join(f"{k}={v}" for k, v in sorted((f.get("params") or {}).items())) or "n/a"),
            ("code version", f"`{f.get('code_version', 'n/a')}`"),
            ("trigger", f.get("trigger", "manual")),
        ]),
        "",
        f"### Features ({len(f.get('features') or [])})",
        "",
        "| feature | recipe |",
        "|---|---|",
        *[f"| `{name}` | {recipe} |" for name, recipe in (f.get("feature_recipes") or {}).items()],
        "",
        "## Validation (rank IC: per-date Spearman correlation of score and outcome, mean over dates)",
        "",
        "| scheme | mean | standard error | notes |",
        "|---|---:|---:|---|",
        f"| walk-forward CV | {_num(cv.get('walk_forward_rank_ic'))} | {_num(cv.get('walk_forward_se'))} | "
        f"{_share(cv.get('positive_folds'))} of {_num(cv.get('folds'))} folds positive; SE = std over folds / sqrt(folds) |",
        f"| purged K-fold CV | {_num(cv.get('kfold_rank_ic'))} | n/a | |",
        f"| CPCV paths | {_num(cv.get('cpcv_path_sharpe_mean'))} (mean path Sharpe) | n/a | combinatorial purged paths of the pick |",
        f"| holdout | {_num(cv.get('holdout_rank_ic'))} | {_num(cv.get('holdout_se'))} | {_num(cv.get('holdout_dates'))} dates; "
        "SE from the per-date spread over dates / horizon (overlapping labels) |",
        "",
        "## Promotion evidence",
        _table([
            ("trials behind the pick (N)", f"{_num(evidence.get('trials'))} ({_num(evidence.get('effective_trials'))} effective after clustering)"),
            ("deflated Sharpe ratio", _num(evidence.get("dsr"))),
            ("probability of backtest overfitting", _num(evidence.get("pbo"))),
            ("probabilistic Sharpe ratio", _num(evidence.get("psr"))),
            ("validation report", f"{evidence.get('verdict', 'n/a')}: " + ("; ".join(evidence.get("reasons") or []) or "no reasons")),
        ]),
        "",
        "## Backtest, net of costs",
        _table([
            ("net Sharpe (whole backtest)", _num(backtest.get("net_sharpe"))),
            ("walk-forward / holdout net Sharpe", f"{_num(backtest.get('walk_forward_net_sharpe'))} / {_num(backtest.get('holdout_net_sharpe'))}"),
            ("costs", f"{_num(backtest.get('cost_bps_per_side'), 1)} bps per side, turnover {_num(backtest.get('turnover_per_day'), 3)} per day, "
                      f"{_num(backtest.get('holding_days'))}-day tranches, {_num(backtest.get('execution_lag_days'))}-day execution lag"),
            ("baselines' net Sharpe", ", ".join(f"{k} {_num(v, 3)}" for k, v in (backtest.get("baseline_net_sharpe") or {}).items()) or "n/a"),
        ]),
        "",
        "## What drives the score (mean |contribution| on the holdout)",
        "",
        "| feature | mean abs contribution |",
        "|---|---:|",
        *[f"| `{k}` | {v:.4g} |" for k, v in (f.get("top_contributions") or {}).items()],
        "",
        "## Gate",
        "",
        f"**{gate.get('verdict', 'not evaluated')}**: {gate.get('detail', '')}",
        "",
    ]
    return "\n".join(lines)


def card_summary(facts: Mapping[str, Any]) -> str:
    """The version's description: the card in one paragraph."""
    f, cv, ev, gate = facts, facts.get("cv") or {}, facts.get("evidence") or {}, facts.get("gate") or {}
    top = ", ".join(list(f.get("top_contributions") or {})[:3]) or "n/a"
    return (
        f"{f.get('description') or f['candidate']}; trained to {(f.get('data') or {}).get('train_end', 'n/a')} on "
        f"{_num((f.get('data') or {}).get('symbols'))} symbols (data {str((f.get('data') or {}).get('fingerprint', 'n/a'))[:12]}); "
        f"walk-forward CV rank IC {_num(cv.get('walk_forward_rank_ic'))} ± {_num(cv.get('walk_forward_se'))}, holdout "
        f"{_num(cv.get('holdout_rank_ic'))} ± {_num(cv.get('holdout_se'))}; DSR {_num(ev.get('dsr'))}, PBO {_num(ev.get('pbo'))} "
        f"over {_num(ev.get('trials'))} trials; net Sharpe {_num((f.get('backtest') or {}).get('net_sharpe'))}; top features {top}; "
        f"trigger {f.get('trigger', 'manual')}; gate {gate.get('verdict', 'not evaluated')}. Full card: {CARD_ARTIFACT} on run "
        f"{f.get('run_id', 'n/a')}."
    )
