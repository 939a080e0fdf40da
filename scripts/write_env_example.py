"""Write `.env.example` from the Settings class and the deployment-only variables, so the list can never drift.

Run: .venv/bin/python scripts/write_env_example.py  (tests/test_config.py checks the result)

Two kinds of variables:
- the settings: every field of `readmission.config.Settings`, the one class Python reads;
- the deployment secrets: read by docker-compose.yaml and kubernetes/ (the containers of MySQL,
  PostgreSQL, MinIO, Grafana, Airflow), by no Python of the platform; so they are listed here,
  not in `Settings`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from readmission.config import Settings

HEADER = """# Every setting of the platform, with its default. Copy to `.env` and change what you need.
# Empty store URLs mean the embedded defaults: SQLite files and a local MLflow store under DATA_DIR.
# Secrets (RELOAD_TOKEN, AWS keys, database passwords inside URLs) belong in `.env`, never in git.
"""

DEPLOYMENT_HEADER = """
# --- deployment secrets: read by docker-compose.yaml and kubernetes/ (the containers), not by Python;
# they go into database URLs, so use only letters, digits and . _ ~ - ----------------------------------
"""

# name -> what it is; each is used by docker-compose.yaml and the Kubernetes manifests (a test checks it).
DEPLOYMENT_VARIABLES = {
    "MYSQL_ROOT_PASSWORD": "MySQL's root (docker-compose, Kubernetes).",
    "MYSQL_PIPELINE_PASSWORD": "MySQL user `pipeline`: raw/clean DBs.",
    "MYSQL_MLFLOW_PASSWORD": "MySQL user `mlflow`: mlflow_db.",
    "MYSQL_MONITOR_PASSWORD": "MySQL user `monitor` (the UI): reads only.",
    "POSTGRES_AIRFLOW_PASSWORD": "PostgreSQL user `airflow`: Airflow's metadata (database `airflow`).",
    "MINIO_ROOT_USER": "MinIO's admin, used only to create the buckets and the app user.",
    "MINIO_ROOT_PASSWORD": "MinIO admin password (8 characters or more).",
    "AWS_ACCESS_KEY_ID": "S3 key of the applications (a MinIO user in the stack; boto3 reads it itself).",
    "AWS_SECRET_ACCESS_KEY": "S3 secret of the applications (boto3 reads it itself).",
    "GRAFANA_ADMIN_PASSWORD": "Grafana user `admin`.",
    "AIRFLOW_FERNET_KEY": "Encrypts Airflow connections (Fernet key).",
    "AIRFLOW_JWT_SECRET": "Signs the tokens of Airflow's components.",
    "AIRFLOW_API_SECRET_KEY": "Signs Airflow's log-server requests.",
}


def render() -> str:
    """The file's text: one `NAME=default` line per setting, then per deployment secret, each after its description."""
    lines = [HEADER]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = ""
        if field.description:
            lines.append(f"# {field.description}")
        lines.append(f"{name.upper()}={'' if default is None else default}")
    lines.append(DEPLOYMENT_HEADER.rstrip("\n"))
    for name, description in DEPLOYMENT_VARIABLES.items():
        lines += [f"# {description}", f"{name}="]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    Path(__file__).resolve().parents[1].joinpath(".env.example").write_text(render())
