"""Which version a `models:/` URI names, `@production` above all: the platform's one answer.

The registry client is made from the settings' URIs explicitly (`MlflowClient(tracking_uri=...,
registry_uri=...)`); nothing here sets MLflow's process-wide URIs. An alias that points nowhere
(or a registered model that does not exist yet) is `None`, never an exception; any other
failure (MLflow down) is raised as MLflow raised it.

This module imports MLflow's client only: the UI image (mlflow-skinny) uses it too.
"""

from __future__ import annotations

import re

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from readmission.config import Settings

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


def registry_client(settings: Settings) -> MlflowClient:
    """A client of the tracking server and registry at `settings.mlflow_tracking_uri`."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        settings.data_dir.resolve().mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_not_found(exc: MlflowException) -> bool:
    """Whether MLflow said the model, version or alias asked for does not exist."""
    return exc.error_code == NOT_FOUND or "not found" in str(exc).lower()


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version of registered model `name` holding `alias`, or None when no version does (or no such model)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise


def production_version(settings: Settings, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version holding `@production` (`settings.model_alias`) of `settings.model_name`, or None."""
    return version_by_alias(client or registry_client(settings), settings.model_name, settings.model_alias)


def version_of_uri(uri: str, settings: Settings, client: MlflowClient | None = None) -> ModelVersion | None:
    """The registered version `uri` names (`models:/name@alias` or `models:/name/N`), or None when it names none.

    ValueError for a URI that is not a `models:/` URI (a path or a run's model has no version).
    """
    if not (match := MODEL_URI.match(uri)):
        raise ValueError(f"{uri!r} is not a models:/<name>@<alias> or models:/<name>/<version> URI")
    client = client or registry_client(settings)
    if match["alias"]:
        return version_by_alias(client, match["name"], match["alias"])
    try:
        return client.get_model_version(match["name"], match["version"])
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise


def model_files(uri: str, settings: Settings, client: MlflowClient | None = None) -> str:
    """Where the files of the model at `uri` are, to download with `tracking_uri=settings.mlflow_tracking_uri`.

    A `models:/` URI is resolved here, with the explicit client: MLflow's own resolution of one
    asks a client on the process-wide registry URI. Any other URI (a folder, `runs:/...`) is
    returned as it is. LookupError when a `models:/` URI names no version.
    """
    if not MODEL_URI.match(uri):
        return uri
    client = client or registry_client(settings)
    version = version_of_uri(uri, settings, client)
    if version is None:
        raise LookupError(f"no registered version is {uri}")
    return client.get_model_version_download_uri(version.name, version.version)
