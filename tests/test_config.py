"""Settings: one class reads the environment, and `.env.example` lists every variable."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from readmission.config import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def test_env_example_lists_every_setting_and_nothing_else():
    listed = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")}
    assert listed == {name.upper() for name in Settings.model_fields}


def test_empty_store_urls_default_to_files_under_the_data_folder(tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.raw_db_url == f"sqlite:///{tmp_path / 'raw_data_db.sqlite'}"
    assert settings.clean_db_url == f"sqlite:///{tmp_path / 'clean_data_db.sqlite'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.model_uri == "models:/diabetes-readmission@production"


def test_environment_variables_override_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCH_SIZE", "500")
    monkeypatch.setenv("RAW_DB_URL", "mysql+pymysql://u:p@db:3306/raw_data_db")
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.batch_size == 500
    assert settings.raw_db_url == "mysql+pymysql://u:p@db:3306/raw_data_db"


@pytest.mark.parametrize("field, value", [("batch_size", "0"), ("batch_size", "many"), ("target", "90day")])
def test_invalid_values_are_refused_with_the_setting_named(monkeypatch, field, value):
    monkeypatch.setenv(field.upper(), value)
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None)


def test_risk_thresholds_must_be_ordered():
    with pytest.raises(ValidationError, match="RISK_MEDIUM_THRESHOLD"):
        Settings(_env_file=None, risk_medium_threshold=0.8, risk_high_threshold=0.5)
