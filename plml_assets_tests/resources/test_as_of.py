"""Simulated time: `plml advance` moves the as-of date and the price source hides later dates."""

from __future__ import annotations

import pandas as pd
import pytest

from plml_assets.cli import main
from plml_assets.resources.prices import PriceSource


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLML_HOME", str(tmp_path))
    monkeypatch.setenv("PLML_PRICES", "embedded")
    return tmp_path


def _last_date(source: PriceSource) -> pd.Timestamp:
    return source.load().index.get_level_values("date").max()


def test_advance_moves_today_forward_by_trading_dates(home, capsys):
    source = PriceSource(source="embedded", symbols=["AAPL", "KO", "PG"])
    everything = source.load().index.get_level_values("date").unique().sort_values()
    assert main(["advance", "--to", "2019-12-31"]) == 0
    assert _last_date(source) == pd.Timestamp("2019-12-31")
    assert main(["advance", "--days", "40"]) == 0
    after = everything[everything.get_loc(pd.Timestamp("2019-12-31")) + 40]
    assert _last_date(source) == after and "(+40 trading dates)" in capsys.readouterr().out
    assert "embedded:skfolio.sp500 as of" in source.describe_source()
    # An explicit as_of wins over the file; clearing shows every date again.
    assert _last_date(PriceSource(source="embedded", symbols=["KO"], as_of="2010-06-30")) <= pd.Timestamp("2010-06-30")
    assert main(["advance", "--clear"]) == 0
    assert _last_date(source) == everything[-1]


def test_advance_refuses_what_it_cannot_do(home, capsys):
    assert main(["advance", "--days", "5"]) == 2
    assert "needs a starting as-of date" in capsys.readouterr().err
    assert main(["advance", "--to", "1900-01-01"]) == 2
    assert "no date on or before 1900-01-01" in capsys.readouterr().err
    assert main(["advance", "--to", "not-a-date"]) == 2
