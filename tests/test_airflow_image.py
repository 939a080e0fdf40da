"""The Airflow image (`./Dockerfile`): the pinned official image, the project installed, DAGs copied, non-root, no secrets."""

from __future__ import annotations

import re
from importlib.metadata import version

from tests.servers import REPO_ROOT, dockerfile_instructions

DOCKERFILE = REPO_ROOT / "Dockerfile"
INSTRUCTIONS = dockerfile_instructions(DOCKERFILE)


def arguments_of(keyword: str) -> list[str]:
    return [arguments for instruction, arguments in INSTRUCTIONS if instruction == keyword]


def copied_sources() -> list[str]:
    """The build-context paths the COPY instructions take (options and destination dropped)."""
    sources = []
    for arguments in arguments_of("COPY"):
        words = [word for word in arguments.split() if not word.startswith("--")]
        sources += words[:-1]
    return sources


def test_it_builds_on_the_official_airflow_image_of_the_version_the_project_pins():
    assert arguments_of("FROM") == [f"apache/airflow:{version('apache-airflow')}-python3.11"]
    assert f"apache-airflow[postgres]=={version('apache-airflow')}" in (REPO_ROOT / "pyproject.toml").read_text()


def test_it_installs_the_requirements_and_the_package_and_copies_the_dags():
    runs = " ".join(arguments_of("RUN"))
    assert "-r /opt/readmission/requirements.txt" in runs
    assert "pip install --no-deps /opt/readmission" in runs
    assert {"requirements.txt", "readmission", "dags/"} <= set(copied_sources())
    assert any(arguments.endswith("/opt/airflow/dags/") for arguments in arguments_of("COPY"))


def test_it_runs_as_the_official_images_non_root_airflow_user():
    assert arguments_of("USER")[-1] == "50000"  # `airflow` in apache/airflow images


def test_every_copied_path_is_sent_to_the_build_and_exists():
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO_ROOT / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in copied_sources():
        assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"
        assert (REPO_ROOT / source).exists(), source


def test_no_secret_is_baked_into_the_image():
    settings = " ".join(arguments_of("ENV") + arguments_of("ARG"))
    assert not re.search(r"(PASSWORD|TOKEN|SECRET|ACCESS_KEY)", settings, re.IGNORECASE)


def test_the_requirements_pin_every_dependency_the_tasks_import():
    # The package goes in with --no-deps: what its core, `storage` and `ml` extras need must be pinned in
    # requirements.txt, or come with Airflow itself (SQLAlchemy, pydantic, requests).
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    def normalised(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    pinned = {normalised(Requirement(line).name) for line in lines if line.strip() and not line.startswith("#")}
    needed = {
        normalised(requirement.name)
        for requirement in map(Requirement, requires("readmission"))
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in ("storage", "ml"))
    }
    missing = needed - pinned - {"readmission", "sqlalchemy", "pydantic", "requests"}
    assert not missing, f"requirements.txt misses {sorted(missing)}: the Airflow image would not have them"
