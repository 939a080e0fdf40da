"""`make demo` as a newcomer sees it: a few lines per batch, the logs in files, the promoted model in service."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import requests

from readmission.demo import BatchOutcome, table
from readmission.pipeline import LocalRun
from tests.servers import VENV_BIN, free_port, wait_until

pytestmark = pytest.mark.servers


def local_run(**results) -> LocalRun:
    states = {task: "success" for task in ("store_clean", "score_batch", "train", "promote", "notify_serving")}
    return LocalRun(states, results)


def test_a_batch_line_says_what_was_stored_scored_trained_and_decided():
    run = local_run(
        store_clean={"rows_stored": 14_998},
        score_batch={"model_version": "2", "live_roc_auc": 0.6843},
        train={"version": "3"},
        promote={"decision": "kept_as_challenger"},
        notify_serving={},
    )
    line = BatchOutcome.of(3, run, 58.4).line(total=7)
    assert line == "batch 3/7: 14,998 rows stored | live ROC-AUC of v2 0.684 | model v3 kept as challenger | 58 s"


def test_a_failed_run_names_its_failed_task():
    run = LocalRun({"store_raw": "success", "store_clean": "failed", "export_batch": "upstream_failed"}, {})
    outcome = BatchOutcome.of(2, run, 3.0)
    assert outcome.decision == "failed at store_clean" and outcome.rows_stored is None
    assert table([outcome.row()]).splitlines()[1].split()[-4:] == ["-", "failed", "at", "store_clean"]


def model_version(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/model", timeout=10).json()["version"]


def test_the_demo_prints_a_line_per_batch_and_serves_the_last_promoted_version(synthetic_csv, tmp_path):
    ports = {name: free_port() for name in ("DATA_API_PORT", "API_PORT", "UI_PORT")}
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
    environment |= {name: str(port) for name, port in ports.items()} | {
        "DATA_DIR": str(tmp_path / "data"),
        "DATASET_PATH": str(synthetic_csv),
        "BATCH_SIZE": "1500",
        "DATA_API_URL": f"http://127.0.0.1:{ports['DATA_API_PORT']}",
        "PROMOTION_MIN_AUC": "0.5",
        "API_URL": f"http://127.0.0.1:{ports['API_PORT']}",
        "SERVING_URL": f"http://127.0.0.1:{ports['API_PORT']}",
        "PATH": "/usr/bin:/bin",
    }
    output = tmp_path / "demo.out"
    with output.open("w") as terminal:
        demo = subprocess.Popen(
            [str(VENV_BIN / "readmission"), "demo"],
            stdout=terminal,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: "Ctrl-C stops everything." in output.read_text() or demo.poll() is not None,
            900,
            interval=2,
            what="the demo to run its batches",
        )
        lines = output.read_text().splitlines()
        assert demo.poll() is None, "\n".join(lines)
        promoted = [line for line in lines if line.split()[:1] in (["1"], ["2"], ["3"]) and "promoted" in line]
        last_promoted = promoted[-1].split()[4].lstrip("v")
        # Every worker of the API serves it once the one that answered /reload has it and the others have polled.
        wait_until(
            lambda: {model_version(ports["API_PORT"]) for _ in range(6)} == {last_promoted},
            30,
            what=f"every worker to serve version {last_promoted}",
        )
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        returncode = demo.wait(timeout=120)
    batch_lines = [line for line in lines if line.startswith("batch ") and "/3:" in line]
    assert len(batch_lines) == 3 and len(lines) < 30, "\n".join(lines)
    assert all("rows stored" in line for line in batch_lines), "\n".join(batch_lines)
    assert all("API reloaded" in line for line in batch_lines if "promoted" in line), "\n".join(batch_lines)
    assert not [line for line in lines if "WARNING" in line or "Traceback" in line], "\n".join(lines)
    logs = tmp_path / "data" / "logs"
    assert {"airflow.log", "mlflow.log", "inference_api.log", "data_api.log", "ui.log"} <= {
        p.name for p in logs.iterdir()
    }
    assert "diabetes_pipeline" in (logs / "airflow.log").read_text()
    assert returncode == 0
