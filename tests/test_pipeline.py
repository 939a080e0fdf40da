"""The DAG's steps called directly (no Airflow): sources, the batch store, run settings, notifications.

The whole DAG, run by Airflow against the real stack, is in `test_pipeline_e2e.py`.
"""

from __future__ import annotations

import pandas as pd
import pytest
import requests
import sqlalchemy as sa

from readmission import batch_store, ingest, pipeline
from readmission.config import Settings
from readmission.storage import Storage
from readmission.validation import split_valid_rows
from tests.servers import S3_TEST_CREDENTIALS, free_port


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_the_source_is_ready_when_the_data_api_answers(make_settings, synthetic_data_api):
    assert pipeline.check_source(make_settings(data_api_url=synthetic_data_api))["data_api_url"] == synthetic_data_api


def test_a_data_api_that_does_not_answer_skips_the_run(make_settings):
    with pytest.raises(pipeline.RunSkipped, match="does not answer"):
        pipeline.check_source(make_settings(data_api_url=closed_url()))


def test_a_stopped_instance_skips_the_run_and_says_so(make_settings, make_ec2_instance, synthetic_data_api):
    instance = make_ec2_instance("stopped")
    with pytest.raises(pipeline.RunSkipped, match=f"{instance} is stopped"):
        pipeline.check_source(make_settings(data_api_url=synthetic_data_api, ec2_instance_id=instance))


def test_a_running_instance_with_its_api_up_is_ready(make_settings, make_ec2_instance, synthetic_data_api):
    settings = make_settings(data_api_url=synthetic_data_api, ec2_instance_id=make_ec2_instance("running"))
    assert pipeline.check_source(settings)["instance_state"] == "running"


def test_a_fetched_batch_lands_in_the_batch_store_exactly_as_served(make_settings, synthetic_data_api, synthetic_frame):
    settings = make_settings(data_api_url=synthetic_data_api)
    fetched = pipeline.fetch_batch(settings, 2)
    assert fetched | {"seconds": 0} == {"batch": 2, "total_batches": 4, "rows_fetched": 1_000, "seconds": 0}
    landed = batch_store.read_batch_file(settings, batch_store.batch_key(2, "raw"))
    pd.testing.assert_frame_equal(landed, synthetic_frame.iloc[1_000:2_000].reset_index(drop=True).astype(object))


def test_fetching_the_current_batch_reports_its_number(make_settings, synthetic_data_api):
    # The session's data API moves to the next batch every 5 minutes: the current one is what it says around the fetch.
    def current() -> int:
        return requests.get(f"{synthetic_data_api}/health", timeout=10).json()["current_batch"]

    before = current()
    fetched = pipeline.fetch_batch(make_settings(data_api_url=synthetic_data_api))["batch"]
    assert fetched in {before, current()}


def test_an_unknown_batch_number_is_refused(make_settings, synthetic_data_api):
    with pytest.raises(pipeline.BatchRefused, match="no batch 99"):
        pipeline.fetch_batch(make_settings(data_api_url=synthetic_data_api), 99)


def test_the_batch_store_round_trips_text_and_missing_values_on_s3(make_settings, s3_server, monkeypatch):
    for name, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = make_settings(batch_store="s3", s3_bucket="batches-test", s3_endpoint_url=s3_server.url)
    frame = pd.DataFrame({"max_glu_serum": ["None", "?", None], "encounter_id": ["1", "2", "3"]}, dtype=object)
    assert (
        batch_store.write_batch_file(settings, "batches/1/raw.parquet", frame)
        == "s3://batches-test/batches/1/raw.parquet"
    )
    back = batch_store.read_batch_file(settings, "batches/1/raw.parquet")
    assert back["max_glu_serum"].tolist() == ["None", "?", None]


def test_mysql_connection_uris_are_used_with_mysqlclient(make_settings):
    settings = pipeline.run_settings(
        make_settings(), raw_db_uri="mysql://u:p%40ss@db:3306/raw_data_db", clean_db_uri=None, force_retrain=True
    )
    assert settings.raw_db_url == "mysql+mysqldb://u:p%40ss@db:3306/raw_data_db"
    assert settings.clean_db_url == make_settings().clean_db_url
    assert settings.force_retrain is True


def test_settings_survive_the_round_trip_through_the_environment(make_settings, monkeypatch):
    settings = make_settings(reload_token="s3cret", force_retrain=True, batch_size=123)
    for name, value in pipeline.settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == settings


def test_an_unreachable_inference_service_is_a_warning_not_a_failure(make_settings, caplog):
    result = pipeline.notify_serving(make_settings(serving_url=closed_url()), {"batch": 3, "promoted": True})
    assert result["notified"] is False
    assert "not reloaded" in caplog.text


def land(settings: Settings, batch: int, rows: pd.DataFrame) -> None:
    """Put rows where fetch_batch lands a batch, as if the data API had served them."""
    batch_store.write_batch_file(settings, batch_store.batch_key(batch, "raw"), rows.astype(object))


def ingest_landed(settings: Settings, batch: int) -> dict:
    """The DAG's storage steps for one landed batch; their results by step name."""
    return {
        "store_raw": pipeline.store_raw(settings, batch),
        "store_clean": pipeline.store_clean(settings, batch),
        "export_batch": pipeline.export_batch(settings, batch),
    }


def table_counts(settings: Settings) -> dict[str, int]:
    storage = Storage.from_settings(settings)
    with storage.raw.connect() as raw, storage.clean.connect() as clean:
        counts = {
            "diabetes_raw": raw.execute(sa.text("SELECT COUNT(*) FROM diabetes_raw")).scalar(),
            "quarantine": raw.execute(sa.text("SELECT COUNT(*) FROM quarantine")).scalar(),
            "diabetes_clean": clean.execute(sa.text("SELECT COUNT(*) FROM diabetes_clean")).scalar(),
        }
    storage.dispose()
    return counts


def test_a_landed_batch_is_stored_raw_and_clean_and_exported(make_settings, synthetic_frame):
    settings = make_settings()
    rows = synthetic_frame.iloc[:500].copy()
    rows.loc[:4, "readmitted"] = "maybe"  # five rows to quarantine
    land(settings, 1, rows)
    results = ingest_landed(settings, 1)
    assert results["store_raw"]["rows_stored_raw"] == 500
    assert results["store_clean"] | {"seconds": 0} == {
        "batch": 1,
        "rows_received": 500,
        "rows_stored": 495,
        "rows_rejected": 5,
        "seconds": 0,
    }
    assert table_counts(settings) == {"diabetes_raw": 500, "quarantine": 5, "diabetes_clean": 495}
    exported = pd.read_parquet(results["export_batch"]["clean"])
    assert len(exported) == 495 and set(exported["batch_number"]) == {1}
    assert exported["time_in_hospital"].dtype == "int64" and exported["encounter_id"].dtype == "int64"


def test_the_storage_steps_validate_and_clean_a_batch_once(make_settings, synthetic_frame, monkeypatch):
    settings = make_settings()
    land(settings, 1, synthetic_frame.iloc[:200])
    validated = []

    def counted(raw_rows):
        validated.append(len(raw_rows))
        return split_valid_rows(raw_rows)

    monkeypatch.setattr(ingest, "split_valid_rows", counted)
    ingest_landed(settings, 1)
    assert validated == [200]


def test_running_the_storage_steps_again_changes_nothing(make_settings, synthetic_frame):
    settings = make_settings()
    land(settings, 1, synthetic_frame.iloc[:300])
    ingest_landed(settings, 1)
    before = (table_counts(settings), Storage.from_settings(settings).read_clean_batch(1))
    ingest_landed(settings, 1)
    after = (table_counts(settings), Storage.from_settings(settings).read_clean_batch(1))
    assert before[0] == after[0] == {"diabetes_raw": 300, "quarantine": 0, "diabetes_clean": 300}
    pd.testing.assert_frame_equal(before[1], after[1])


def test_a_batch_with_a_missing_column_is_refused_before_anything_is_written(make_settings, synthetic_frame):
    settings = make_settings()
    land(settings, 1, synthetic_frame.iloc[:100].drop(columns=["A1Cresult"]))
    with pytest.raises(pipeline.BatchRefused, match="missing columns \\['A1Cresult'\\]"):
        pipeline.store_raw(settings, 1)
    assert table_counts(settings) == {"diabetes_raw": 0, "quarantine": 0, "diabetes_clean": 0}


def test_a_batch_without_one_usable_row_is_refused_before_anything_is_stored_clean(make_settings, synthetic_frame):
    settings = make_settings()
    land(settings, 1, synthetic_frame.iloc[:100].assign(readmitted="YES"))
    pipeline.store_raw(settings, 1)
    with pytest.raises(pipeline.BatchRefused, match="no valid row .*readmitted must be one of"):
        pipeline.store_clean(settings, 1)
    assert table_counts(settings) == {"diabetes_raw": 100, "quarantine": 0, "diabetes_clean": 0}
