"""Credentials from the environment (or a file it names) and masked wherever plml shows a URL."""

from __future__ import annotations

import pytest

from plml_assets.definitions import build_resources
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.optuna_storage import OptunaStorage
from plml_assets.resources.secrets import env_value, known_secrets, mask_secrets, mask_url

PW = "Zq8-s3cr3t"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://plml:{PW}@db.internal:5432/plml", "postgresql://plml:***@db.internal:5432/plml"),
        (f"postgresql+psycopg2://plml:{PW}@10.0.0.5/optuna?sslmode=require", "postgresql+psycopg2://plml:***@10.0.0.5/optuna?sslmode=require"),
        ("mysql+pymysql://u:p%40ss%2Fw0rd@h/db", "mysql+pymysql://u:***@h/db"),  # percent-encoded '@' and '/'
        (f"https://alice:{PW}@mlflow.example.com/", "https://alice:***@mlflow.example.com/"),
        (f"postgresql://plml@h/db?password={PW}&sslmode=disable", "postgresql://plml@h/db?password=***&sslmode=disable"),
        (f"https://mlflow.example.com/api?token={PW}", "https://mlflow.example.com/api?token=***"),
        # nothing to mask: unchanged
        ("postgresql://plml@127.0.0.1:5432/test", "postgresql://plml@127.0.0.1:5432/test"),
        ("sqlite:////tmp/plml/optuna.db", "sqlite:////tmp/plml/optuna.db"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("tcp://dask-scheduler:8786", "tcp://dask-scheduler:8786"),
        ("file:///tmp/mlruns", "file:///tmp/mlruns"),
        ("", ""),
        (None, None),
    ],
)
def test_mask_url_hides_the_password_and_secret_query_values_only(url, shown):
    assert mask_url(url) == shown
    if url and PW in url:
        assert PW not in mask_url(url)


def test_mask_secrets_masks_urls_inside_text_and_every_credential_of_the_environment(monkeypatch):
    monkeypatch.setenv("PLML_OPTUNA_STORAGE", f"postgresql://plml:{PW}@db/optuna")
    monkeypatch.setenv("PGPASSWORD", "pg-pass-77")
    for name in ("PLML_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    # A driver's message quoting the URL, and one quoting only the password.
    text = (f"(psycopg2.OperationalError) could not connect: 'postgresql://plml:{PW}@db/optuna' "
            f"and password \"{PW}\" rejected; PGPASSWORD=pg-pass-77; http://u:other-pw@h/x")
    out = mask_secrets(text)
    assert PW not in out and "pg-pass-77" not in out and "other-pw" not in out
    assert "postgresql://plml:***@db/optuna" in out and "http://u:***@h/x" in out and "could not connect" in out
    assert set(known_secrets()) >= {PW, "pg-pass-77"}
    # Without a password anywhere the text is untouched (a host:port is not a password).
    plain = "connection to server at 127.0.0.1:5432 failed; http://mlflow:5000/api/2.0 and tcp://h:8786"
    assert mask_secrets(plain, environment=False) == plain


def test_credentials_come_from_the_environment_or_a_file_it_names(monkeypatch, tmp_path):
    monkeypatch.delenv("PLML_OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("PLML_OPTUNA_STORAGE_FILE", raising=False)
    assert env_value("PLML_OPTUNA_STORAGE") is None
    secret = tmp_path / "optuna-url"
    secret.write_text(f"postgresql://plml:{PW}@db/optuna\n")  # as a mounted Kubernetes Secret
    monkeypatch.setenv("PLML_OPTUNA_STORAGE_FILE", str(secret))
    assert env_value("PLML_OPTUNA_STORAGE") == f"postgresql://plml:{PW}@db/optuna"
    storage = OptunaStorage()
    assert storage.resolved_url() == f"postgresql://plml:{PW}@db/optuna"
    assert storage.display_url() == "postgresql://plml:***@db/optuna"
    assert PW in known_secrets()
    # The variable itself wins over its file.
    monkeypatch.setenv("PLML_OPTUNA_STORAGE", "sqlite:////tmp/x.db")
    assert OptunaStorage().resolved_url() == "sqlite:////tmp/x.db"
    monkeypatch.delenv("PLML_OPTUNA_STORAGE")
    # A named file that is missing or empty is a clear error naming the variable, not a silent default.
    monkeypatch.setenv("PLML_OPTUNA_STORAGE_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"PLML_OPTUNA_STORAGE_FILE=.*missing.* cannot be read"):
        OptunaStorage().resolved_url()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("PLML_OPTUNA_STORAGE_FILE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is empty"):
        OptunaStorage().resolved_url()


def test_the_resources_read_store_urls_from_the_environment_and_keep_them_out_of_their_config(monkeypatch, tmp_path):
    """The Dagster UI shows every resource's config and each run records it: a password-bearing URL
    must be read from the environment when used, never copied into the config."""
    monkeypatch.setenv("PLML_OPTUNA_STORAGE", f"postgresql://plml:{PW}@db/optuna")
    monkeypatch.setenv("PLML_MLFLOW_TRACKING_URI", f"postgresql://plml:{PW}@db/mlflow")
    resources = build_resources()
    for key in ("optuna_storage", "mlflow_registry"):
        config = resources[key].model_dump() if hasattr(resources[key], "model_dump") else dict(resources[key])
        assert PW not in repr(config) and PW not in repr(resources[key]), key
    registry, storage = resources["mlflow_registry"], resources["optuna_storage"]
    assert registry.resolved_tracking_uri() == f"postgresql://plml:{PW}@db/mlflow"
    assert registry.display_tracking_uri() == "postgresql://plml:***@db/mlflow"
    assert storage.resolved_url() == f"postgresql://plml:{PW}@db/optuna" and storage.display_url() == "postgresql://plml:***@db/optuna"
    monkeypatch.setenv("PLML_MLFLOW_TRACKING_URI", "")
    monkeypatch.setenv("PLML_MLFLOW_TRACKING_URI_FILE", str(tmp_path / "uri"))
    (tmp_path / "uri").write_text("http://mlflow:5000")
    assert MlflowRegistry().resolved_tracking_uri() == "http://mlflow:5000"
