"""Issue 18 item 5: a damaged Optuna SQLite file (its header overwritten, or cut short) is found by
SQLite's own check before a study touches it: set aside (renamed, never deleted) so a new study starts
in a fresh file, or refused naming the file (on_damaged="fail", `plml worker`, `plml doctor`). Real
SQLite files and real Optuna studies."""

from __future__ import annotations

import optuna
import pytest

from plml_assets import cli
from plml_assets.lib.tuning.study import run_study
from plml_assets.resources.optuna_storage import DamagedStorageError, OptunaStorage, sqlite_damage
from plml_assets_tests.lib.test_tuning import QUICK_SPACE, quick_objective


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "header":  # overwritten from the start (another program wrote over it)
        path.write_bytes(b"not a database, just bytes" * 8 + data[216:])
    else:  # cut short (a full disk, a copy killed half way)
        path.write_bytes(data[: len(data) // 3])


@pytest.fixture
def damaged(tmp_path, request):
    path = tmp_path / "optuna.db"
    storage = OptunaStorage(url=f"sqlite:///{path}")
    study = optuna.create_study(study_name="before", storage=storage.storage())
    for _ in range(30):  # enough pages that a cut leaves a structurally broken file
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5, user_attrs={"pad": "x" * 2000}))
    assert sqlite_damage(path) is None
    del study
    _damage(path, request.param)
    original = path.read_bytes()
    assert sqlite_damage(path) is not None
    return storage, path, original


@pytest.mark.parametrize("damaged", ["header", "cut"], indirect=True)
def test_a_damaged_storage_is_set_aside_and_a_new_study_runs_in_a_fresh_file(damaged):
    storage, path, original = damaged
    lines: list[str] = []
    url = storage.checked_url(lines.append)
    (aside,) = path.parent.glob("optuna.db.damaged-*")
    assert aside.read_bytes() == original and not path.exists()  # kept, byte for byte, for inspection
    assert len(lines) == 1 and f"the Optuna storage {path} was damaged" in lines[0] and str(aside) in lines[0]
    result = run_study(quick_objective, QUICK_SPACE, storage_url=url, study_name="after", sampler="random",
                       pruner="none", n_trials=3, seed=0)
    assert result.n_done == 3 and sqlite_damage(path) is None
    assert storage.checked_url(lines.append) == url and len(lines) == 1  # sound now: nothing more to say


@pytest.mark.parametrize("damaged", ["header"], indirect=True)
def test_a_damaged_storage_is_refused_by_name_where_asked_and_by_workers_and_the_doctor(damaged, capsys):
    storage, path, original = damaged
    refused = OptunaStorage(url=storage.url, on_damaged="fail")
    with pytest.raises(DamagedStorageError, match=rf"the Optuna storage {path} is damaged \(.+\).*mv {path}"):
        refused.checked_url()
    with pytest.raises(DamagedStorageError):
        storage.storage()  # the doctor's and the health probe's read: never moves a file
    assert path.read_bytes() == original
    # `plml worker` joins a study that must exist: it refuses instead of starting over
    assert cli.main(["worker", "--study", "before", "--storage", storage.url]) == 2
    err = capsys.readouterr().err
    assert f"plml worker: the Optuna storage {path} is damaged" in err and path.read_bytes() == original
