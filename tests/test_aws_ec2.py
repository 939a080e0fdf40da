"""The EC2 side: the data set lands on the instance's disk once, and the boot files fit ec2_api's compose file."""

from __future__ import annotations

import functools
import re
import subprocess
import threading
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import pytest

from readmission.scheduler_spec import AWS_DIR

EC2_DIR = AWS_DIR / "ec2"
COMPOSE_FILE = AWS_DIR.parent / "ec2_api" / "docker-compose.yml"


@pytest.fixture
def dataset_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving one data set file; yields (url, list of paths requested)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "diabetic_data.csv.gz").write_bytes(b"not really gzip, but bytes to copy")
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/diabetic_data.csv.gz", requested
    server.shutdown()


def fetch(data_dir: Path, url: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATASET_DIR": str(data_dir),
        "DATASET_FILE": "diabetic_data.csv.gz",
        "DATASET_URL": url,
    }
    return subprocess.run(
        ["bash", str(EC2_DIR / "fetch_dataset.sh")], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_data_set_is_downloaded_once_and_kept_on_disk(tmp_path, dataset_server):
    url, requested = dataset_server
    data_dir = tmp_path / "opt-diabetes-data"

    first, second = fetch(data_dir, url), fetch(data_dir, url)

    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert (data_dir / "diabetic_data.csv.gz").read_bytes() == b"not really gzip, but bytes to copy"
    assert requested == ["/diabetic_data.csv.gz"]  # the second boot found it on disk
    assert sorted(path.name for path in data_dir.iterdir()) == ["diabetic_data.csv.gz"]  # no partial file left


def test_a_failed_download_leaves_no_data_set_behind(tmp_path, dataset_server):
    url, _ = dataset_server
    data_dir = tmp_path / "data"

    result = fetch(data_dir, url.replace("diabetic_data", "missing"))

    assert result.returncode != 0
    assert not (data_dir / "diabetic_data.csv.gz").exists()


def test_the_boot_files_give_the_compose_file_every_variable_it_reads():
    compose_variables = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    environment_file = re.search(
        r"cat > /etc/default/diabetes-data-api <<ENV\n(.*?)\nENV", (EC2_DIR / "user-data.sh").read_text(), re.S
    )[1]
    written = {line.split("=", 1)[0] for line in environment_file.splitlines()}
    assert compose_variables <= written
    unit = (EC2_DIR / "diabetes-data-api.service").read_text()
    assert "EnvironmentFile=/etc/default/diabetes-data-api" in unit
    assert "WorkingDirectory=/opt/diabetes/app/ec2_api" in unit and "Restart=always" in unit


def test_the_user_data_script_parses_and_leaves_the_repository_and_ids_to_the_user():
    script = (EC2_DIR / "user-data.sh").read_text()
    assert subprocess.run(["bash", "-n", str(EC2_DIR / "user-data.sh")]).returncode == 0
    assert re.search(r'^REPO_URL=""', script, re.M)
    assert not re.search(r"\bi-[0-9a-f]{8,17}\b|\b\d{12}\b", script)  # no instance or account ids
