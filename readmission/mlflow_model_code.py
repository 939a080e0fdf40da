"""The python_function model of a registered version: the file MLflow runs to load one ("models from code").

Rows of the data set in (`EncounterRow`: as pandas reads the file, or as text), a frame with the
probability of readmission out. See readmission.mlflow_model for how it is packaged.
"""

from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from readmission import schema
from readmission.mlflow_model import PIPELINE_ARTIFACT, PROBABILITY_COLUMN, EncounterRow, read_skops


class ReadmissionModel(PythonModel):
    """Rows of the data set in, the probability of readmission out."""

    def load_context(self, context) -> None:
        self.pipeline = read_skops(context.artifacts[PIPELINE_ARTIFACT])
        self.positive = list(self.pipeline.classes_).index(1)

    # MLflow 3 reads the input type from this hint and calls predict without a context.
    def predict(self, model_input: list[EncounterRow], params: dict[str, Any] | None = None) -> pd.DataFrame:  # type: ignore[override]
        rows = pd.DataFrame([row.__dict__ for row in model_input], columns=list(schema.FEATURE_INPUT_COLUMNS))
        return pd.DataFrame({PROBABILITY_COLUMN: self.pipeline.predict_proba(rows)[:, self.positive]})


set_model(ReadmissionModel())
