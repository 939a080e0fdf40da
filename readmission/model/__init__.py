"""The model room: everything about a registered model, in one place.

- `tags`: the names of the MLflow tags the platform writes on runs and versions;
- `production`: the one answer to "which version is `@production`" (and any other alias or
  version a `models:/` URI names), with the registry client made from explicit URIs;
- `registry`: logging a training run and registering its model, loading a version's pipeline
  (through skops, `readmission.mlflow_model.read_pipeline`, never unpickled), moving the
  `@production` alias by hand and rolling it back, listing versions;
- `gate`: the promotion gate that decides whether a new version takes `@production`.

`tags` and `production` import MLflow's client only, so the UI (which has mlflow-skinny, no
scikit-learn model code) uses them as the inference service and the pipeline do.
"""
