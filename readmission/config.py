"""Settings: the one place that reads the environment.

Every variable is listed, with its default, in `.env.example`. Defaults are the
embedded ones (SQLite files and a local MLflow store under `DATA_DIR`), so a fresh
checkout runs with no configuration at all.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

UCI_DATASET_URL = "https://archive.ics.uci.edu/static/public/296/diabetes+130-us+hospitals+for+years+1999-2008.zip"


class Settings(BaseSettings):
    """Platform configuration, read from environment variables (case-insensitive) and `.env`."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- data set and local folders -------------------------------------------------
    dataset_path: str = Field(UCI_DATASET_URL, description="Path or URL of the UCI CSV (.csv, .gz or .zip).")
    data_dir: Path = Field(Path("data"), description="Local folder for the embedded stores and reports.")

    # --- EC2 data API -----------------------------------------------------------------
    batch_size: int = Field(15_000, gt=0)
    batch_interval_seconds: float = Field(300.0, gt=0)
    data_api_host: str = "127.0.0.1"
    data_api_port: int = 5001
    data_api_url: str = "http://127.0.0.1:5001"
    data_api_timeout_seconds: float = 60.0

    # --- storage ----------------------------------------------------------------------
    raw_db_url: str = ""  # default: sqlite:///<data_dir>/raw_data_db.sqlite
    clean_db_url: str = ""  # default: sqlite:///<data_dir>/clean_data_db.sqlite
    insert_chunk_rows: int = Field(
        2_000, gt=0, description="Rows per INSERT (below MySQL's max_allowed_packet) or per LOAD DATA file."
    )
    mysql_raw_conn_id: str = "mysql_raw"
    mysql_clean_conn_id: str = "mysql_clean"

    # --- S3 / MinIO -------------------------------------------------------------------
    s3_bucket: str = "diabetes-batches"
    s3_endpoint_url: str = ""  # MinIO or moto; empty means AWS S3
    aws_region: str = "us-east-1"

    # --- training, MLflow, registry ---------------------------------------------------
    mlflow_tracking_uri: str = ""  # default: sqlite:///<data_dir>/mlflow.db
    mlflow_experiment: str = "diabetes-readmission"
    model_name: str = "diabetes-readmission"
    model_alias: str = "production"
    challenger_alias: str = "challenger"
    target: Literal["any", "30day"] = "any"
    promotion_min_auc: float = Field(0.60, ge=0, le=1)
    promotion_tolerance: float = Field(0.005, ge=0, le=1)
    # How far the worst patient group's ROC-AUC (race, gender, age band) may fall below the champion's.
    promotion_group_tolerance: float = Field(0.02, ge=0, le=1)
    random_seed: int = 42

    # --- inference service ------------------------------------------------------------
    model_uri: str = ""  # default: models:/<model_name>@<model_alias>; a local path works too
    reload_token: SecretStr = SecretStr("")
    model_poll_seconds: float = Field(30.0, gt=0)
    max_batch_rows: int = Field(10_000, gt=0)
    max_body_bytes: int = Field(20_000_000, gt=0)
    risk_medium_threshold: float = Field(0.40, ge=0, le=1)
    risk_high_threshold: float = Field(0.60, ge=0, le=1)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = Field(2, gt=0)
    prometheus_multiproc_dir: str = ""
    drift_window: int = Field(1_000, gt=0, description="Recent requests kept for serving-side drift.")

    # --- Streamlit UI -------------------------------------------------------------------
    api_url: str = "http://127.0.0.1:8000"
    ui_host: str = "127.0.0.1"  # the image binds 0.0.0.0
    ui_port: int = 8501
    mlflow_ui_url: str = ""  # link target for the model report card; empty hides it
    api_timeout_seconds: float = Field(30.0, gt=0, description="How long the UI waits for an answer of the API.")

    # --- pipeline / Airflow -------------------------------------------------------------
    ec2_instance_id: str = ""
    serving_url: str = "http://127.0.0.1:8000"
    pushgateway_url: str = ""  # e.g. 127.0.0.1:9091; empty disables pushing
    force_retrain: bool = False
    batch_store: Literal["local", "s3"] = Field(
        "local", description="Where batch Parquet files go: <data_dir>/batches, or s3://<s3_bucket>/batches."
    )
    pipeline_retry_delay_seconds: float = Field(60.0, gt=0, description="Delay before a failed DAG task is retried.")
    pipeline_schedule: str = Field(
        "*/5 * * * *", description="When the DAG takes the data API's current batch (cron); empty: triggered runs only."
    )
    airflow_port: int = Field(8080, description="Port of Airflow's UI and REST API (`make airflow`).")
    airflow_admin_password: SecretStr = Field(
        SecretStr(""), description="Airflow user `admin` (`make airflow`: empty lets Airflow generate one; compose)."
    )

    # --- AWS scheduler ------------------------------------------------------------------
    ec2_instance_ids: str = ""  # comma-separated, for the start/stop Lambdas
    schedule_timezone: str = "America/Lima"
    start_time: str = "09:00"
    stop_time: str = "23:55"
    lambda_role_name: str = "ec2-scheduler-lambda"
    scheduler_role_name: str = "ec2-scheduler-invoke"
    lambda_name_prefix: str = "ec2-data-api"

    # --- load tests (Locust SLOs) -------------------------------------------------------
    slo_max_failure_ratio: float = Field(0.01, ge=0, le=1)
    slo_p95_predict_ms: float = Field(200.0, gt=0)
    loadtest_shape: Literal["constant", "step"] = Field(
        "constant", description="constant: LOADTEST_USERS for LOADTEST_RUN_SECONDS; step: capacity search."
    )
    loadtest_users: int = Field(20, gt=0, description="Users of the constant shape.")
    loadtest_run_seconds: float = Field(60.0, gt=0, description="Duration of the constant shape.")
    loadtest_spawn_rate: float = Field(10.0, gt=0, description="Users started per second.")
    loadtest_step_users: int = Field(25, gt=0, description="Users added per step of the step shape.")
    loadtest_step_seconds: float = Field(20.0, gt=0, description="Duration of one step of the step shape.")
    loadtest_max_users: int = Field(1_000, gt=0, description="The step shape stops here even if the SLOs hold.")
    loadtest_clinician_weight: int = Field(20, ge=0, description="Relative share of users sending single predictions.")
    loadtest_system_weight: int = Field(1, ge=0, description="Relative share of users sending batch predictions.")
    loadtest_monitor_weight: int = Field(1, ge=0, description="Relative share of users checking health and model.")
    loadtest_batch_rows: int = Field(300, gt=0, description="Encounters per batch request.")
    loadtest_think_seconds: float = Field(1.0, ge=0, description="Mean pause of a user between two requests.")
    loadtest_dataset_path: str = Field("", description="CSV of raw encounters to sample; empty: synthetic ones.")
    loadtest_pool_rows: int = Field(2_000, gt=0, description="Encounters sampled into the request pool.")
    loadtest_report_dir: Path = Field(Path("reports/loadtest"), description="CSV, HTML and markdown reports.")

    # --- access control -----------------------------------------------------------------
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Keys the inference API accepts on /predict, "
        "/predict/batch and /model: name:sha256hex[:rights],... (`readmission apikey new`); "
        "empty: no key needed.",
    )
    require_api_keys: bool = Field(False, description="Refuse to start the inference API without API_KEYS (prod).")
    api_rate_limit: float = Field(0.0, ge=0, description="Requests per second per API key; 0: no limit.")
    api_key: SecretStr = Field(SecretStr(""), description="The key this client (the UI, Locust) presents to API_URL.")
    ui_sign_in: bool = Field(
        False,
        description="The UI signs clinicians in with the OpenID Connect provider of "
        ".streamlit/secrets.toml [auth]; nothing is shown before.",
    )
    ui_allowed_domains: str = Field("", description="E-mail domains that may enter the UI, comma-separated.")
    ui_allowed_groups: str = Field("", description="Groups (UI_GROUPS_CLAIM of the ID token) that may enter the UI.")
    ui_groups_claim: str = Field("groups", description="The ID token claim listing a user's groups.")
    data_api_admin_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token of the data API's POST /restart; empty: restarting over HTTP is disabled.",
    )
    data_api_allowed_cidr: str = Field(
        "",
        description="The only CIDR the data API's security group opens port "
        "DATA_API_PORT to (the Airflow workers' egress).",
    )
    data_api_security_group: str = Field("ec2-data-api", description="Name of the data API's security group.")

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        """Fill store URLs that were left empty with files under `data_dir`."""
        data = self.data_dir.resolve()
        if not self.raw_db_url:
            self.raw_db_url = f"sqlite:///{data / 'raw_data_db.sqlite'}"
        if not self.clean_db_url:
            self.clean_db_url = f"sqlite:///{data / 'clean_data_db.sqlite'}"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{data / 'mlflow.db'}"
        if not self.model_uri:
            self.model_uri = f"models:/{self.model_name}@{self.model_alias}"
        if self.risk_medium_threshold > self.risk_high_threshold:
            raise ValueError("RISK_MEDIUM_THRESHOLD must not exceed RISK_HIGH_THRESHOLD")
        return self

    @property
    def artifacts_dir(self) -> Path:
        """Local MLflow artifact root for the embedded store."""
        return self.data_dir.resolve() / "mlartifacts"


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as the environment variables `Settings()` reads back: what a child process is started
    with (`subprocess` `env=`) so that it runs on these settings. The parent's own environment is not touched."""
    environment = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        value = value.get_secret_value() if isinstance(value, SecretStr) else value
        environment[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return environment


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
