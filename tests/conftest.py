"""Shared fixtures: settings, synthetic data, and the real servers the tests start.

Servers live for the whole session and are shared; each test that writes gets fresh
databases (`mariadb_urls` drops and recreates them) so tests never see each other's rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from readmission.config import Settings
from readmission.dataset import synthetic_dataset, write_synthetic_csv
from tests.servers import MariaDB

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
