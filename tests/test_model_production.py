"""`@production` and the versions `models:/` URIs name (`readmission.model.production`), on the embedded store."""

from __future__ import annotations

import pytest

from readmission.model import production, registry
from tests.factories import log_version


def test_no_registered_model_means_no_production_version(make_settings):
    settings = make_settings()
    assert production.production_version(settings) is None
    assert production.version_of_uri(f"models:/{settings.model_name}/1", settings) is None


def test_a_registered_model_holds_production_only_once_a_version_is_given_it(make_settings, plain_model):
    settings = make_settings()
    version = log_version(plain_model, settings)
    assert production.production_version(settings) is None
    assert production.version_of_uri(f"models:/{settings.model_name}@challenger", settings) is None

    registry.set_production(settings, version)

    assert str(production.production_version(settings).version) == version
    named = production.version_of_uri(f"models:/{settings.model_name}@{settings.model_alias}", settings)
    assert str(named.version) == version and named.run_id
    assert registry.describe_production(settings)["version"] == version


def test_a_path_names_no_registered_version(make_settings, tmp_path):
    with pytest.raises(ValueError, match="is not a models:/<name>@<alias> or models:/<name>/<version> URI"):
        production.version_of_uri(str(tmp_path / "model"), make_settings())
