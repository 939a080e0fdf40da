"""Acceptance: the real UCI data set, served by the real data API, ingested into a real MariaDB."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from readmission import ingest
from readmission.features import EncounterFeatures
from readmission.storage import STORED, Storage
from tests.servers import start_data_api

pytestmark = pytest.mark.acceptance

TOTAL_ROWS = 101_766
BATCH_SIZE = 15_000


@pytest.fixture(scope="module")
def real_data_api(real_dataset_path, tmp_path_factory) -> str:
    server, url = start_data_api(real_dataset_path, tmp_path_factory.mktemp("data-api-logs"), batch_size=BATCH_SIZE)
    yield url
    server.stop()


def test_every_batch_of_the_real_data_set_is_ingested_into_mariadb(real_data_api, mariadb_urls):
    storage = Storage(mariadb_urls["raw_data_db"], mariadb_urls["clean_data_db"])
    storage.create_schema()
    first = ingest.fetch(real_data_api, 1, timeout=120)
    results = [ingest.ingest_batch(storage, first, f"data-api:{real_data_api}")]
    for number in range(2, first.total_batches + 1):
        results.append(ingest.ingest_batch(storage, ingest.fetch(real_data_api, number, timeout=120), "data-api"))

    assert [r.received for r in results] == [BATCH_SIZE] * 6 + [TOTAL_ROWS - 6 * BATCH_SIZE]
    log = storage.batch_log()
    assert log["batch_number"].tolist() == list(range(1, 8)) and set(log["status"]) == {STORED}
    assert (log["rows_received"] == log["rows_stored"] + log["rows_rejected"]).all()
    with storage.raw.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM diabetes_raw")).scalar() == TOTAL_ROWS
    quarantine = storage.quarantine()
    assert len(quarantine) == log["rows_rejected"].sum()  # the rejected count, explained row by row
    assert quarantine["reason"].str.len().gt(0).all()
    with storage.clean.connect() as conn:
        clean_rows = conn.execute(sa.text("SELECT COUNT(*) FROM diabetes_clean")).scalar()
        patients_in_two_splits = conn.execute(sa.text(
            "SELECT COUNT(*) FROM (SELECT patient_nbr FROM diabetes_clean GROUP BY patient_nbr"
            " HAVING COUNT(DISTINCT split) > 1) AS mixed")).scalar()  # fmt: skip
        shares = dict(conn.execute(sa.text(
            "SELECT split, COUNT(DISTINCT patient_nbr) / (SELECT COUNT(DISTINCT patient_nbr) FROM diabetes_clean)"
            " FROM diabetes_clean GROUP BY split")).tuples().all())  # fmt: skip
    assert clean_rows == TOTAL_ROWS - len(quarantine) == log["rows_stored"].sum()
    assert patients_in_two_splits == 0
    assert float(shares["train"]) == pytest.approx(0.70, abs=0.01)
    assert float(shares["validation"]) == pytest.approx(0.15, abs=0.01)
    assert float(shares["test"]) == pytest.approx(0.15, abs=0.01)
    labelled = storage.labelled_encounters()
    assert len(labelled) == clean_rows
    # What models train on (the clean table) gives the features the raw text of the same encounters gives.
    raw = pd.concat([storage.read_raw_batch(number) for number in range(1, 8)], ignore_index=True)
    raw = raw.set_index(raw["encounter_id"].astype("int64")).loc[labelled["encounter_id"]].reset_index(drop=True)
    features = EncounterFeatures()
    pd.testing.assert_frame_equal(features.transform(labelled), features.transform(raw))
    storage.dispose()
