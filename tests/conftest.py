"""Shared fixtures: settings, synthetic data, and the real servers the tests start.

Servers live for the whole session and are shared; each test that writes gets fresh
databases (`mariadb_urls` drops and recreates them) so tests never see each other's rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest

from readmission.config import Settings
from readmission.dataset import synthetic_dataset, write_synthetic_csv
from tests.servers import MariaDB

pytest_plugins = ["tests.tiers"]

REAL_DATASET = os.environ.get("DATASET_PATH", "")


@pytest.fixture(scope="session")
def synthetic_frame() -> pd.DataFrame:
    """4,000 synthetic encounters in the data set's text format (read-only: copy before changing)."""
    return synthetic_dataset(rows=4_000, seed=7)


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    """A gzipped synthetic data set file of 4,000 rows."""
    return write_synthetic_csv(tmp_path_factory.mktemp("dataset") / "synthetic.csv.gz", rows=4_000, seed=7)


@pytest.fixture
def make_settings(tmp_path):
    """Settings on a throw-away data folder; keyword arguments override fields."""

    def factory(**overrides) -> Settings:
        return Settings(_env_file=None, data_dir=tmp_path / "data", **overrides)

    return factory


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    """One MariaDB server (Debian binaries) for the whole test session."""
    server = MariaDB(tmp_path_factory.mktemp("mariadb")).start()
    yield server
    server.stop()


@pytest.fixture
def mariadb_urls(mariadb) -> dict[str, str]:
    """Fresh, empty raw/clean/mlflow databases on the session's MariaDB."""
    mariadb.reset()
    return {db: mariadb.url(db) for db in MariaDB.DATABASES}


@pytest.fixture(scope="session")
def real_dataset_path() -> str:
    """The real UCI data set, or skip when DATASET_PATH does not point at a readable file."""
    if not REAL_DATASET or not Path(REAL_DATASET).is_file():
        pytest.skip("DATASET_PATH does not point at the real data set")
    return REAL_DATASET


@pytest.fixture
def aws_credentials(monkeypatch, tmp_path):
    """Fake AWS credentials and region; no profile, config file or endpoint of the machine is read."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "EC2_INSTANCE_IDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # thousands of AMIs per region, unused here
    return "us-east-1"


@pytest.fixture(scope="session")
def _shared_botocore_session():
    """One botocore session for every moto test: it parses each (large) service model once."""
    import botocore.session
    import moto  # noqa: F401 - registers its request interceptor for the sessions created after it

    return botocore.session.get_session()


@pytest.fixture
def aws(aws_credentials, _shared_botocore_session):
    """moto standing in for AWS (the region it yields); nothing reaches a real account."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        # mock_aws clears boto3's default session; give it back one that has the models loaded.
        boto3.setup_default_session(botocore_session=_shared_botocore_session, region_name=aws_credentials)
        yield aws_credentials


@pytest.fixture
def make_ec2_instance(aws):
    """Launch a moto EC2 instance in a given state (`running`, `stopped`, `pending`, `stopping`...); its id."""
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    ec2 = boto3.client("ec2", region_name=aws)

    def launch(state: str = "running") -> str:
        instance_id = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        if state == "stopped":
            ec2.stop_instances(InstanceIds=[instance_id])
        elif state == "terminated":
            ec2.terminate_instances(InstanceIds=[instance_id])
        elif state != "running":
            # moto switches states at once and has no API for the transitional ones: set it directly.
            ec2_backends[DEFAULT_ACCOUNT_ID][aws].get_instance(instance_id)._state.name = state
        return instance_id

    return launch


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """Airflow configured for the whole session: a throw-away AIRFLOW_HOME, SQLite metadata DB, no examples.

    Airflow reads its configuration once, when first imported: tests import airflow only
    through fixtures that depend on this one.
    """
    from readmission.pipeline import airflow_environment

    environment = airflow_environment(Settings(_env_file=None, data_dir=tmp_path_factory.mktemp("airflow")))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        Path(environment["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        from airflow import configuration

        assert configuration.AIRFLOW_HOME == environment["AIRFLOW_HOME"], "airflow was imported before this fixture"
        yield Path(environment["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def airflow_db(airflow_home) -> Path:
    """The session's Airflow metadata DB, migrated (what `airflow db migrate` does)."""
    from airflow.utils import db

    db.initdb()
    return airflow_home


@pytest.fixture(params=["sqlite", "mariadb-pymysql", "mariadb-mysqlclient", "mariadb-inserts"])
def storage_urls(request, tmp_path) -> tuple[str, str]:
    """(raw URL, clean URL) of fresh, empty databases: SQLite files, then the session's MariaDB through
    each of the two MySQL drivers the package supports (rows sent as files, LOAD DATA LOCAL INFILE),
    then through mysqlclient without local files (rows sent as INSERTs, as to a MySQL 8 server
    that keeps `local_infile` off)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'raw_data_db.sqlite'}", f"sqlite:///{tmp_path / 'clean_data_db.sqlite'}"
    mariadb = request.getfixturevalue("mariadb")
    mariadb.reset()
    driver = "pymysql" if request.param == "mariadb-pymysql" else "mysqldb"
    query = "?local_infile=0" if request.param == "mariadb-inserts" else ""
    return mariadb.url("raw_data_db", driver) + query, mariadb.url("clean_data_db", driver) + query


@pytest.fixture
def storage(storage_urls):
    """A Storage with its schema created, 40 rows per INSERT so small batches span several chunks."""
    from readmission.storage import Storage

    store = Storage(*storage_urls, chunk_rows=40)
    store.create_schema()
    yield store
    store.dispose()  # pooled connections would hold MariaDB's metadata locks against the next reset


@pytest.fixture(scope="session")
def synthetic_data_api(synthetic_csv, tmp_path_factory) -> str:
    """The real data API (gunicorn) serving `synthetic_csv` in 1,000-row batches for the session; its URL."""
    from tests.servers import start_data_api

    # An hour per batch: the suite takes longer than the four batches would last at the real 5 minutes each.
    server, url = start_data_api(synthetic_csv, tmp_path_factory.mktemp("data-api-logs"), batch_size=1_000,
                                 interval=3600.0)  # fmt: skip
    yield url
    server.stop()


class ServedModel(NamedTuple):
    url: str  # of the inference API
    registry: Settings  # the embedded MLflow store the model is registered in
    version: str  # the version in service


@pytest.fixture(scope="session")
def served_model(tmp_path_factory) -> ServedModel:
    """The real inference API (its image's command) serving a small model trained, evaluated (figures
    too) and registered by the registry's own functions in an embedded MLflow store, for the session."""
    from tests.factories import register_model
    from tests.servers import start_inference_api

    folder = tmp_path_factory.mktemp("served-model")
    settings = Settings(_env_file=None, data_dir=folder / "registry")
    version = register_model(settings, figures=True)
    server, url = start_inference_api({"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}, folder)
    yield ServedModel(url, settings, version)
    server.stop()


class TrackingServer(NamedTuple):
    url: str  # the server's MLFLOW_TRACKING_URI
    s3: "S3Server"  # noqa: F821 - the S3 endpoint holding its artifacts (tests.servers.S3Server)
    bucket: str  # its artifacts are under s3://<bucket>/artifacts
    backend_store_uri: str  # its backend store: database `mlflow_server_db` on the session's MariaDB


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server (the `moto_server` process, standing in for MinIO) for the session: a
    `tests.servers.S3Server` with `.url`, `.client()` and `.keys(bucket)`. Buckets are shared: make your own."""
    from tests.servers import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mariadb, s3_server, tmp_path_factory) -> TrackingServer:
    """The real `mlflow server`, started with Dockerfile_mlflow's own command, for the session.

    Backend store: database `mlflow_server_db` on the session's MariaDB (not one `mariadb_urls`
    resets); artifacts: the bucket `mlflow-artifacts` of `s3_server`, proxied by the server (clients
    need no S3 credentials). Tests share it: give each test its own MODEL_NAME (and experiment).
    """
    from tests.servers import create_database, start_mlflow_image

    bucket = "mlflow-artifacts"
    s3_server.client().create_bucket(Bucket=bucket)
    backend = create_database(mariadb, "mlflow_server_db")
    server, url = start_mlflow_image(backend, f"s3://{bucket}/artifacts", s3_server.url, tmp_path_factory.mktemp("mlflow"))
    yield TrackingServer(url, s3_server, bucket, backend)
    server.stop()


_PRISTINE_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def _restore_mlflow_tracking_uri():
    """`mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI to the environment, even from module or
    session fixtures: put back the value the session started with after each test, so a later
    `Settings()` never reads another test's MLflow store."""
    yield
    if _PRISTINE_TRACKING_URI is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = _PRISTINE_TRACKING_URI


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's, installed by `make test`) with a fresh profile, for the UI tests."""
    from tests.browser import chromium

    driver = chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()
