"""How a trained pipeline is packaged in MLflow, and read back.

A registered version is an MLflow python_function model ("models from code", so no pickle):
- its rows are the data set's columns as pandas reads the file: integers for the id codes and
  the counts, text for everything else. Rows read as text (as the data API serves them) are
  accepted too: "3" is read as 3 before the types are checked;
- its answer is a frame with one `readmission_probability` column;
- the scikit-learn pipeline inside is the `pipeline.skops` artifact, saved with skops and read
  back only through the allow-list `SKOPS_TRUSTED_TYPES`.

So `mlflow.pyfunc.load_model(uri).predict(pd.read_csv(path))`, `mlflow models serve` and
`mlflow models predict` all work, and the platform itself (the promotion gate, batch scoring,
the inference service) reads the pipeline with `read_pipeline` and calls it directly.
The model needs the `readmission` package importable where it is loaded (its feature step is
`readmission.features.EncounterFeatures`).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BeforeValidator, ConfigDict, create_model
from sklearn.pipeline import Pipeline

from readmission import features, schema

PROBABILITY_COLUMN = "readmission_probability"
PIPELINE_ARTIFACT = "pipeline"
CODE_FILE = Path(__file__).with_name("mlflow_model_code.py")  # the python_function model class
INTEGER_COLUMNS = (*features.ID_COLUMNS, *schema.COUNT_RANGES)

# The types beyond skops' defaults that our pipelines hold, and why:
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "readmission.features.EncounterFeatures",  # the feature step of every model
    "sklearn.tree._tree.Tree",  # the trees of GradientBoostingClassifier
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # the trees of HistGradientBoostingClassifier
    "sklearn.calibration._CalibratedClassifier",  # the calibrated candidate: CalibratedClassifierCV's fitted pair,
    "sklearn.calibration._SigmoidCalibration",  # and its Platt sigmoid (readmission.train.calibrated)
)


class NotAPlatformModel(ValueError):
    """A model folder that holds no skops pipeline of this platform (a pickled model, say)."""


def _integer(value: Any) -> Any:
    """A count or id code as an int: text as the data API serves it ("3") and whole floats are read as numbers."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _text(value: Any) -> str | None:
    """A code as text; pandas' NaN (how it reads the value "None" of the lab tests) is a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


Integer = Annotated[int, BeforeValidator(_integer)]
Text = Annotated[str | None, BeforeValidator(_text)]

_ROW_FIELDS: dict[str, Any] = {
    column: (Integer, ...) if column in INTEGER_COLUMNS else (Text, None) for column in schema.FEATURE_INPUT_COLUMNS
}
EncounterRow = create_model(
    "EncounterRow",
    __config__=ConfigDict(extra="ignore"),  # identifiers and the label may come along, as in the file
    **_ROW_FIELDS,
)


def trusted_types(pipeline: Pipeline) -> list[str]:
    """The non-default types skops must trust to load `pipeline`; ValueError if any is not in SKOPS_TRUSTED_TYPES."""
    import skops.io

    needed = sorted(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))
    unexpected = [name for name in needed if name not in SKOPS_TRUSTED_TYPES]
    if unexpected:
        raise ValueError(
            f"the model holds types that are not in SKOPS_TRUSTED_TYPES: {unexpected}; "
            "review them and add them there rather than saving with pickle"
        )
    return needed


def read_skops(path: Path | str) -> Any:
    """What a skops file holds, trusting skops' defaults and `SKOPS_TRUSTED_TYPES` only."""
    import skops.io

    return skops.io.load(path, trusted=list(SKOPS_TRUSTED_TYPES))


def read_pipeline(model_dir: Path | str) -> Pipeline:
    """The scikit-learn pipeline of a model folder, read by skops through the platform's allow-list.

    The allow-list is the platform's own, not one stored with the model by whoever wrote it.
    """
    from mlflow.models import Model

    model_dir = Path(model_dir)
    flavor = Model.load(str(model_dir)).flavors.get("python_function") or {}
    artifact = (flavor.get("artifacts") or {}).get(PIPELINE_ARTIFACT, {}).get("path")
    if not artifact or not artifact.endswith(".skops"):
        raise NotAPlatformModel(
            f"{model_dir} holds no skops pipeline (python_function flavor: {flavor or 'missing'}): "
            "the platform does not unpickle models"
        )
    pipeline = read_skops(model_dir / artifact)
    if not isinstance(pipeline, Pipeline):
        raise NotAPlatformModel(f"{model_dir} holds a {type(pipeline).__name__}, not a scikit-learn Pipeline")
    return pipeline


def input_example(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as the model's input example: the data set's values, ints for the integer columns, None for missing."""
    example = rows.loc[:, list(schema.FEATURE_INPUT_COLUMNS)]
    return [EncounterRow.model_validate(row).model_dump() for row in example.to_dict(orient="records")]


def requirements() -> list[str]:
    """Pinned requirements of the model (given, so MLflow does not load the model again to infer them)."""
    import mlflow
    import pydantic
    import sklearn
    import skops

    return [
        f"mlflow=={mlflow.__version__}",
        f"scikit-learn=={sklearn.__version__}",
        f"skops=={skops.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        f"pydantic=={pydantic.__version__}",
    ]


@contextmanager
def _model_arguments(pipeline: Pipeline, example_rows: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """What `mlflow.pyfunc.log_model`/`save_model` take to package `pipeline`, its skops file in a temporary folder."""
    import skops.io

    trusted_types(pipeline)  # refuse an undeclared type now, not when somebody loads the model
    with tempfile.TemporaryDirectory(prefix="pipeline-") as folder:
        artifact = Path(folder) / f"{PIPELINE_ARTIFACT}.skops"
        skops.io.dump(pipeline, artifact)
        yield {
            "python_model": str(CODE_FILE),
            "artifacts": {PIPELINE_ARTIFACT: str(artifact)},
            "input_example": input_example(example_rows),
            "pip_requirements": requirements(),
        }


def log_model(pipeline: Pipeline, example_rows: pd.DataFrame, **log_arguments: Any):
    """Log `pipeline` as this platform's python_function model (see the module docstring); MLflow's ModelInfo.

    `log_arguments` go to `mlflow.pyfunc.log_model` (name, registered_model_name, metadata, ...).
    """
    import mlflow.pyfunc

    with _model_arguments(pipeline, example_rows) as arguments:
        return mlflow.pyfunc.log_model(**arguments, **log_arguments)


def save_model(pipeline: Pipeline, path: Path | str, example_rows: pd.DataFrame, **save_arguments: Any) -> Path:
    """`log_model`, written to a folder instead of a run (tests, and models passed around as files)."""
    import mlflow.pyfunc

    with _model_arguments(pipeline, example_rows) as arguments:
        mlflow.pyfunc.save_model(str(path), **arguments, **save_arguments)
    return Path(path)
