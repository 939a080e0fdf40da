"""What a pipeline run leaves behind, taken as one comparable snapshot: tables, batch store, registry."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from readmission.model.production import registry_client

QUERIES = {
    "diabetes_raw": ("raw", "SELECT * FROM diabetes_raw ORDER BY encounter_id"),
    "batch_log": (
        "raw",
        "SELECT batch_number, rows_received, rows_stored, rows_rejected, checksum, status "
        "FROM batch_log ORDER BY batch_number",
    ),
    "quarantine": ("raw", "SELECT batch_number, stage, encounter_id, reason FROM quarantine ORDER BY id"),
    "diabetes_clean": ("clean", "SELECT * FROM diabetes_clean ORDER BY encounter_id"),
    "predictions": (
        "clean",
        "SELECT encounter_id, batch_number, model_version, probability, prediction, label "
        "FROM predictions ORDER BY encounter_id, model_version",
    ),
}


def snapshot(settings, batch_store_keys: list[str]) -> dict[str, object]:
    """Everything a run writes, without surrogate ids and write timestamps: the raw and clean tables, the keys of
    the batch store (given), and the registered versions and aliases of `settings.model_name`."""
    engines = {"raw": sa.create_engine(settings.raw_db_url), "clean": sa.create_engine(settings.clean_db_url)}
    found: dict[str, object] = {}
    for table, (database, query) in QUERIES.items():
        with engines[database].connect() as conn:
            frame = pd.read_sql(sa.text(query), conn)
        found[table] = frame.drop(columns=["ingested_at"], errors="ignore")
    for engine in engines.values():
        engine.dispose()
    found["batch_store"] = sorted(batch_store_keys)
    registry = registry_client(settings)
    versions = registry.search_model_versions(f"name = '{settings.model_name}'")
    found["versions"] = sorted(int(v.version) for v in versions)
    aliases = registry.get_registered_model(settings.model_name).aliases if versions else {}
    found["aliases"] = {alias: str(version) for alias, version in aliases.items()}  # stores differ: int or text
    return found


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name in before:
        if isinstance(before[name], pd.DataFrame):
            pd.testing.assert_frame_equal(before[name], after[name], obj=name)
        else:
            assert before[name] == after[name], name
