"""The Dockerfiles: pinned base images, a numeric non-root user, only what the service needs, a
HEALTHCHECK where the service has an endpoint; and the command of each service image is the
command the tests start that service with, and that service then passes the image's HEALTHCHECK."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from readmission.config import Settings
from tests.servers import (
    DATA_API_DOCKERFILE,
    MLFLOW_DOCKERFILE,
    REPO_ROOT,
    dockerfile_instructions,
    exec_form,
    exposed_port,
    free_port,
    image_command,
    run_locally,
    start_data_api,
    start_inference_api,
    start_mlflow_image,
    wait_until,
)

# The images that serve an endpoint, and the path their HEALTHCHECK asks.
ENDPOINTS = {
    "ec2_api/Dockerfile": "/health",
    "fastapi/Dockerfile": "/health",
    "streamlit/Dockerfile": "/_stcore/health",
    "Dockerfile_mlflow": "/health",
}
# The images that do not, and why.
NO_ENDPOINT = {
    "Dockerfile": "one Airflow image for four roles: docker-compose.yaml and kubernetes/ check each role's endpoint",
    "locust/Dockerfile": "a load generator that runs headless to completion, not a service",
}
DOCKERFILES = sorted(
    path.relative_to(REPO_ROOT).as_posix()
    for path in [*REPO_ROOT.glob("Dockerfile*"), *REPO_ROOT.glob("*/Dockerfile")]
    if path.is_file() and not path.name.endswith(".dockerignore") and not path.parent.name.startswith(".")
)


def instructions(dockerfile: str, keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions(REPO_ROOT / dockerfile) if name == keyword]


def healthcheck_command(dockerfile: Path) -> list[str]:
    """The argv of the image's HEALTHCHECK (its options dropped)."""
    (healthcheck,) = [a for name, a in dockerfile_instructions(dockerfile) if name == "HEALTHCHECK"]
    return exec_form(healthcheck.split("CMD", 1)[1].strip(), f"the HEALTHCHECK of {dockerfile}")


def passes_healthcheck(dockerfile: Path, port: int) -> bool:
    """Whether the image's own HEALTHCHECK, run from this checkout against 127.0.0.1:`port`, succeeds."""
    command = run_locally(healthcheck_command(dockerfile), dockerfile, port)
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


# --- every Dockerfile -------------------------------------------------------------------------------


def test_every_dockerfile_is_known_to_serve_an_endpoint_or_not():
    assert "ec2_api/Dockerfile" in DOCKERFILES
    unknown = set(DOCKERFILES) - set(ENDPOINTS) - set(NO_ENDPOINT)
    assert not unknown, f"say whether these serve an endpoint (ENDPOINTS or NO_ENDPOINT): {sorted(unknown)}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_base_image_is_pinned(dockerfile):
    stages = set()
    for arguments in instructions(dockerfile, "FROM"):
        words = [w for w in arguments.split() if not w.startswith("--")]
        image = words[0]
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if image in stages:
            continue
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert "@sha256:" in image or (name and tag != "latest" and re.search(r"\d", tag)), f"{image} is not pinned"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_runs_as_a_numeric_non_root_user(dockerfile):
    users = instructions(dockerfile, "USER")
    assert users, f"{dockerfile} runs as its base image's user"
    # Numeric, so Kubernetes' runAsNonRoot can check it without knowing the image's /etc/passwd.
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), f"{dockerfile}: USER {users[-1]} is not numeric"
    assert int(users[-1].split(":")[0]) != 0, f"{dockerfile} runs as root"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_receives_only_what_it_needs(dockerfile):
    ignore = REPO_ROOT / f"{dockerfile}.dockerignore"  # BuildKit reads <Dockerfile>.dockerignore
    assert ignore.is_file(), f"{dockerfile} would be sent the whole repository (data, .venv, .git)"
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", f"{ignore.name} must exclude everything, then allow what the image copies"
    allowed = [p.removeprefix("!").rstrip("/") for p in patterns[1:] if p.startswith("!")]
    assert not any(p.split("/")[0] in ("tests", "data", ".venv", ".git", ".env") for p in allowed), allowed


@pytest.mark.parametrize("dockerfile", sorted(set(DOCKERFILES) & set(ENDPOINTS)))
def test_a_service_image_checks_its_own_endpoint(dockerfile):
    command = " ".join(healthcheck_command(REPO_ROOT / dockerfile))
    port = exposed_port(REPO_ROOT / dockerfile)
    assert f"127.0.0.1:{port}{ENDPOINTS[dockerfile]}" in command, command
    image_command(REPO_ROOT / dockerfile)  # and starts in exec form: signals reach the server, not a shell


# --- each service, started with its image's command (tests/servers.py), passes its healthcheck ----------


@pytest.mark.servers
def test_the_data_api_starts_with_its_image_command_and_passes_its_healthcheck(synthetic_csv, tmp_path):
    server, url = start_data_api(synthetic_csv, tmp_path, batch_size=1_000)
    port = int(url.rsplit(":", 1)[1])
    try:
        assert passes_healthcheck(DATA_API_DOCKERFILE, port)
    finally:
        server.stop()
    assert not passes_healthcheck(DATA_API_DOCKERFILE, port)  # the check fails when nothing answers


@pytest.mark.servers
def test_the_ui_starts_with_its_image_command_and_passes_its_healthcheck(tmp_path):
    from readmission.ui import serve, ui_command

    dockerfile = REPO_ROOT / "streamlit" / "Dockerfile"
    assert ui_command(exposed_port(dockerfile), "0.0.0.0") == image_command(dockerfile)
    port = free_port()
    process = serve(
        Settings(_env_file=None, data_dir=tmp_path, ui_host="127.0.0.1", ui_port=port), log_path=tmp_path / "ui.log"
    )
    try:
        wait_until(lambda: passes_healthcheck(dockerfile, port), timeout=90, what="the UI's HEALTHCHECK")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert not passes_healthcheck(dockerfile, port)


@pytest.mark.servers
def test_the_inference_api_starts_with_its_image_command_and_passes_its_healthcheck(tmp_path):
    dockerfile = REPO_ROOT / "fastapi" / "Dockerfile"
    # No model yet: the service is alive (/health) and not ready; its image checks liveness.
    settings = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MODEL_URI": str(tmp_path / "no-model")}
    server, url = start_inference_api(settings, tmp_path, wait_for_model=False)
    port = int(url.rsplit(":", 1)[1])
    try:
        assert passes_healthcheck(dockerfile, port)
    finally:
        server.stop()
    assert not passes_healthcheck(dockerfile, port)


@pytest.mark.servers
def test_the_mlflow_server_starts_with_its_image_command_and_passes_its_healthcheck(tmp_path):
    # The server reaches S3 only when artifacts move: no S3 endpoint needs to answer for it to start.
    server, url = start_mlflow_image(
        f"sqlite:///{tmp_path / 'mlflow.db'}", "s3://mlflow-artifacts", f"http://127.0.0.1:{free_port()}", tmp_path
    )
    port = int(url.rsplit(":", 1)[1])
    try:
        assert passes_healthcheck(MLFLOW_DOCKERFILE, port)
    finally:
        server.stop()
    assert not passes_healthcheck(MLFLOW_DOCKERFILE, port)
