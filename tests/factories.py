"""Test data factories shared by the test modules."""

from __future__ import annotations

import pandas as pd

from readmission import schema
from readmission.dataset import synthetic_dataset


def encounter_rows(rows: int = 300, seed: int = 0, first_encounter_id: int = 1_000,
                   patients: int | None = None) -> pd.DataFrame:  # fmt: skip
    """Synthetic encounters as the data API client gives them (object columns of text), with
    encounter ids first_encounter_id, first_encounter_id + 1, ...: batches built with disjoint
    ranges never share an encounter."""
    frame = synthetic_dataset(rows, seed=seed, patients=patients).astype(object)
    frame["encounter_id"] = [str(first_encounter_id + i) for i in range(rows)]
    return frame


def encounter(**overrides) -> dict[str, str]:
    """One encounter's 50 source columns as the data set writes them; keyword arguments override values."""
    row = {
        "encounter_id": "2278392", "patient_nbr": "8222157", "race": "Caucasian", "gender": "Female",
        "age": "[70-80)", "weight": "?", "admission_type_id": "1", "discharge_disposition_id": "1",
        "admission_source_id": "7", "time_in_hospital": "3", "payer_code": "MC", "medical_specialty": "Cardiology",
        "num_lab_procedures": "41", "num_procedures": "1", "num_medications": "12", "number_outpatient": "1",
        "number_emergency": "0", "number_inpatient": "2", "diag_1": "428", "diag_2": "250.01", "diag_3": "V45",
        "number_diagnoses": "9", "max_glu_serum": "None", "A1Cresult": "None",
        **dict.fromkeys(schema.MEDICATIONS, "No"),
        "insulin": "Up", "metformin": "Steady", "change": "Ch", "diabetesMed": "Yes", "readmitted": "NO",
    }  # fmt: skip
    unknown = set(overrides) - set(row)
    if unknown:
        raise KeyError(f"not source columns: {sorted(unknown)}")
    return row | overrides


# --- models ---------------------------------------------------------------------------------------


def labelled_encounters(rows: int = 2_000, seed: int = 0) -> pd.DataFrame:
    """Synthetic encounters with their split, as `Storage.labelled_encounters()` gives them but with the 50 columns
    as text (the models compute the same features from text as from the clean table's typed columns)."""
    from readmission.split import assign_split

    frame = synthetic_dataset(rows, seed=seed)
    frame["split"] = assign_split(frame["patient_nbr"])
    return frame


def register_model(settings, seed: int = 0, trees: int = 30, promote: bool = True, figures: bool = False) -> str:
    """Train a small GradientBoosting pipeline (the production shape), log and register it with the registry's
    own functions (with the evaluation figures when `figures`), and move `@production` to it unless `promote`
    is False; the new version."""
    from sklearn.ensemble import GradientBoostingClassifier

    from readmission import registry
    from readmission.train import Candidate, train

    classifier = GradientBoostingClassifier(n_estimators=trees, max_depth=2, random_state=seed)
    result = train(
        labelled_encounters(seed=seed), settings, [Candidate("gradient_boosting", classifier)], figures=figures
    )
    version = str(registry.log_training(result, settings).version)
    if promote:
        registry.promote(settings, version)
    return version


def monitored_store(settings, version: str, rows: int = 400) -> None:
    """Three batches ingested into `settings`' stores as the DAG does, with the predictions `score_batch` stores:
    batch 1 came before any model (not scored), batch 2 was scored by `version`, and batch 3 too, but on it the
    model ranks patients backwards (its outcomes are the reverse of what the model learnt): live ROC-AUC well
    below the floor."""
    from readmission import evaluate, ingest, registry
    from readmission.features import target
    from readmission.sources import Batch
    from readmission.storage import Storage

    model = registry.load_pipeline(f"models:/{settings.model_name}/{version}", settings)
    storage = Storage.from_settings(settings)
    try:
        storage.create_schema()
        for number in (1, 2, 3):
            batch = encounter_rows(rows, seed=40 + number, first_encounter_id=100_000 * number)
            ingest.ingest_batch(storage, Batch(number, 3, batch), "test")
            if number == 1:
                continue
            labels = target(batch["readmitted"]).to_numpy()
            probability = evaluate.positive_probability(model, batch)
            predictions = pd.DataFrame({"encounter_id": batch["encounter_id"].astype("int64"),
                                        "probability": probability, "prediction": (probability >= 0.5).astype(int),
                                        "label": 1 - labels if number == 3 else labels})  # fmt: skip
            storage.write_predictions(number, settings.model_name, version, predictions)
    finally:
        storage.dispose()


# --- pipeline runs ----------------------------------------------------------------------------------


def pipeline_run_figures(batch: int = 3, scored_by: str | None = "2") -> dict[str, dict]:
    """What the DAG's tasks return for one successful run (see readmission.pipeline), by task id: batch
    `batch`, scored by version `scored_by`, a new version 3 promoted over it."""
    return {
        "check_source": {"instance_state": None, "data_api_url": "http://data-api:5001", "seconds": 0.05},
        "fetch_batch": {"batch": batch, "total_batches": 7, "rows_fetched": 1_000, "seconds": 1.2},
        "store_raw": {"batch": batch, "rows_received": 1_000, "rows_stored_raw": 1_000, "rows_rejected_raw": 0,
                      "seconds": 2.0},
        "store_clean": {"batch": batch, "rows_received": 1_000, "rows_stored": 990, "rows_rejected": 10,
                        "seconds": 1.5},
        "export_batch": {"batch": batch, "rows_exported": 990, "clean": f"data/batches/{batch}/clean.parquet",
                         "seconds": 0.3},
        "score_batch": {"batch": batch, "model_version": scored_by, "rows_scored": 990, "live_roc_auc": 0.64,
                        "live_accuracy": 0.61, "seconds": 2.5},
        "train": {"batch": batch, "trained": True, "version": "3", "training_rows": 2_100, "training_seconds": 41.5,
                  "seconds": 43.0},
        "register": {"batch": batch, "version": "3", "new_version": True, "seconds": 0.2},
        "promote": {"batch": batch, "version": "3", "decision": "promoted", "promoted": True,
                    "challenger_roc_auc": 0.66, "champion_roc_auc": 0.65, "champion_version": scored_by,
                    "seconds": 3.1},
        "notify_serving": {"batch": batch, "notified": True, "seconds": 0.1},
    }  # fmt: skip


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))  # fmt: skip


def signature_types(signature) -> dict[str, str]:
    """The MLflow type of each input column of a model's signature (its input is a list of row objects)."""
    (row,) = signature.inputs.inputs
    return {field.name: field.dtype.name for field in row.type.properties}


def saved_model(folder, seed: int = 0, pickled: bool = False):
    """A small production-shaped pipeline saved as a model folder (no registry), as the platform packages it, or
    `pickled` by MLflow's scikit-learn flavour (what the platform refuses to load); the folder."""
    import mlflow.sklearn
    from sklearn.ensemble import GradientBoostingClassifier

    from readmission import mlflow_model
    from readmission.features import target
    from readmission.train import build_pipeline

    frame = synthetic_dataset(1_000, seed=seed)
    pipeline = build_pipeline(GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=seed))
    pipeline.fit(frame, target(frame["readmitted"]))
    if pickled:
        mlflow.sklearn.save_model(pipeline, str(folder), serialization_format="cloudpickle",
                                  pip_requirements=["scikit-learn"])  # fmt: skip
        return folder
    return mlflow_model.save_model(pipeline, folder, frame.head(3))


# --- stores -------------------------------------------------------------------------------------------

TIMESTAMPS = {"ingested_at", "started_at", "finished_at", "scored_at"}
STORE_TABLES = {"raw": ("diabetes_raw", "batch_log", "quarantine"), "clean": ("diabetes_clean", "predictions")}


def cleaned(raw_rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clean rows, quarantined rows with a reason) of stored raw rows: what the ingestion stores clean."""
    from readmission.ingest import validate_and_clean

    result = validate_and_clean(raw_rows)
    return result.clean, result.quarantined


def write_raw_and_clean(storage, number: int, frame: pd.DataFrame):
    """Store a batch raw, then validated and clean, as the DAG's separate tasks do; (raw, final) counts."""
    raw = storage.write_raw(number, frame, source="test")
    return raw, storage.write_clean(number, *cleaned(raw.rows))


def store_contents(storage) -> dict[str, pd.DataFrame]:
    """Every table's rows, timestamps and surrogate ids left out, in a stable order."""
    import sqlalchemy as sa

    tables = {}
    for side, names in STORE_TABLES.items():
        engine = getattr(storage, side)
        for name in names:
            with engine.connect() as conn:
                frame = pd.read_sql(sa.text(f"SELECT * FROM {name}"), conn)
            frame = frame.drop(columns=[c for c in frame.columns if c in TIMESTAMPS or c == "id"])
            tables[name] = frame.sort_values(list(frame.columns), ignore_index=True)
    return tables


def assert_same_contents(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> None:
    for name, expected in before.items():
        pd.testing.assert_frame_equal(after[name], expected, obj=name)


def writes_rows_into(statement: str, table: str) -> bool:
    """Whether `statement` writes rows into `table`: an INSERT, or MySQL's LOAD DATA of a chunk of rows."""
    loads = statement.startswith("LOAD DATA") and f" INTO TABLE {table} " in statement
    return loads or statement.startswith(f"INSERT INTO {table} ")


def old_layout_clean_table(storage) -> None:
    """Put the clean table of the older layout (engineered features, target flags) in place of this one."""
    import sqlalchemy as sa

    storage.drop_clean_table()
    with storage.clean.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE diabetes_clean (a1c_level DOUBLE NOT NULL, readmitted_any SMALLINT NOT NULL,"
                " encounter_id BIGINT PRIMARY KEY, patient_nbr BIGINT NOT NULL, split VARCHAR(10) NOT NULL,"
                " batch_number INTEGER NOT NULL)"
            )
        )
        conn.execute(sa.text("INSERT INTO diabetes_clean VALUES (1.0, 1, 1000, 5, 'train', 1)"))
