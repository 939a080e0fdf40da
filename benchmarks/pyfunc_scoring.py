"""Scoring the data set through MLflow's own loader, beside the pipeline called directly.

`mlflow.pyfunc.load_model(folder).predict(pd.read_csv(path))` is what a data scientist runs; MLflow
checks every row against the model's typed input (pydantic) before the pipeline sees it. The
platform's own paths (batch scoring, the gate, the inference API) call the pipeline directly.

Run: DATASET_PATH=../shared/data/diabetic_data.csv.gz .venv/bin/python benchmarks/pyfunc_scoring.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from readmission import encounter_columns, mlflow_model  # noqa: E402
from tests.factories import saved_model  # noqa: E402 - the benchmark uses the tests' small production-shaped model


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def main() -> int:
    path = os.environ.get("DATASET_PATH")
    if not path:
        print("set DATASET_PATH to the UCI file")
        return 2
    with tempfile.TemporaryDirectory() as folder:
        model_dir = saved_model(Path(folder) / "model")
        model = mlflow.pyfunc.load_model(str(model_dir))
        pipeline = mlflow_model.read_pipeline(model_dir)
        rows = pd.read_csv(path)
        text = pd.read_csv(path, dtype=str, keep_default_na=False)
        direct_seconds, direct = timed(
            lambda: pipeline.predict_proba(text[list(encounter_columns.FEATURE_INPUT_COLUMNS)])[:, 1]
        )
        read_seconds, as_read = timed(lambda: model.predict(rows))
        text_seconds, as_text = timed(lambda: model.predict(text))
    assert np.allclose(as_read["readmission_probability"], direct) and np.allclose(
        as_text["readmission_probability"], direct
    )
    for name, seconds in (
        ("pipeline.predict_proba (reference)", direct_seconds),
        ("pyfunc, pd.read_csv(path)", read_seconds),
        ("pyfunc, read as text", text_seconds),
    ):
        print(f"{name:<36} {seconds:6.2f} s  {len(rows) / seconds:>9,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
