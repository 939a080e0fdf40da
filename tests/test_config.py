"""Settings: one class reads the environment, and `.env.example` lists every variable."""

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from readmission.config import Settings, settings_environment

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = REPO_ROOT / ".env.example"


def env_example_script():
    """scripts/write_env_example.py as a module."""
    spec = importlib.util.spec_from_file_location("write_env_example", REPO_ROOT / "scripts" / "write_env_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_env_example_is_what_the_script_writes():
    assert ENV_EXAMPLE.read_text() == env_example_script().render(), "run scripts/write_env_example.py"


def test_env_example_lists_every_setting_then_the_deployment_secrets_and_nothing_else():
    listed = [
        line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    ]
    deployment = list(env_example_script().DEPLOYMENT_VARIABLES)
    assert listed == [name.upper() for name in Settings.model_fields] + deployment


def test_deployment_secrets_are_used_by_compose_and_kubernetes_and_are_no_settings():
    kubernetes = "\n".join(path.read_text() for path in (REPO_ROOT / "kubernetes").rglob("*.yaml"))
    compose = (REPO_ROOT / "docker-compose.yaml").read_text()
    for name in env_example_script().DEPLOYMENT_VARIABLES:
        assert name in compose and name in kubernetes, f"{name} is used by no deployment file"
        assert name.lower() not in Settings.model_fields, f"{name} is both a setting and a deployment secret"


def test_settings_given_to_a_child_process_are_the_parents(monkeypatch):
    settings = Settings(_env_file=None, reload_token="s3cret", force_retrain=True, batch_size=123, data_dir="relative")
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == settings


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
