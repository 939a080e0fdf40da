"""The clinician UI in a real browser: headless Chromium fills the form of the running UI server.

The UI runs as the image runs it (the Dockerfile's own CMD, on 127.0.0.1) against the real
inference API; Chromium reaches nothing beyond 127.0.0.1. The screenshot of the answered
form is kept under `reports/screenshots/` for a person to look at.
"""

from __future__ import annotations

import shutil

import pytest
import requests
from selenium.webdriver.common.by import By

from readmission.config import Settings
from readmission.serving.schemas import RISK_LABELS
from readmission.ui import forms, ui_environment
from tests.browser import PREDICT, PatientForm
from tests.factories import monitored_store
from tests.servers import REPO_ROOT, ServerProcess, free_port, image_command, run_locally

pytestmark = pytest.mark.servers

DOCKERFILE = REPO_ROOT / "streamlit" / "Dockerfile"
SCREENSHOTS = REPO_ROOT / "reports" / "screenshots"


@pytest.fixture(scope="module")
def ui_server(served_model, tmp_path_factory):
    """The UI server, started with its image's command, talking to the real API; its URL."""
    folder = tmp_path_factory.mktemp("ui")
    settings = Settings(_env_file=None, data_dir=folder, api_url=served_model.url,
                        mlflow_tracking_uri=served_model.registry.mlflow_tracking_uri)  # fmt: skip
    monitored_store(settings, served_model.version)  # three batches for the Monitoring page
    port = free_port()
    server = ServerProcess(run_locally(image_command(DOCKERFILE), DOCKERFILE, port),
                           f"http://127.0.0.1:{port}/_stcore/health", folder / "streamlit.log",
                           env=ui_environment(settings), cwd=REPO_ROOT).start()  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_a_clinician_fills_the_form_in_a_browser_and_reads_the_band_and_model_version(ui_server, browser,
                                                                                      served_model, tmp_path):  # fmt: skip
    browser.get(ui_server)
    page = PatientForm(browser)
    page.wait.until(lambda _: PREDICT in page.text())
    page.choose("age", "80–89 years")
    page.choose("admission_source_id", "Transfer from a hospital")
    page.type("number_inpatient", "3")
    page.type("diag_2", "V45")
    page.wait.until(lambda _: "Supplementary factors (V code)" in page.text())
    page.open_section("Diabetes medications")
    page.choose("insulin", "Dose increased")
    page.wait.until(lambda _: "Insulin (dose increased)" in page.text())
    page.predict()
    page.wait.until(lambda _: any(label in page.text() for label in RISK_LABELS.values()))
    page.screenshot(tmp_path / "single-patient.png")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "single-patient.png", SCREENSHOTS / "ui-single-patient.png")

    expected = requests.post(f"{served_model.url}/predict", timeout=10, json={
        **forms.encounter_payload(forms.default_values()), "age": "[80-90)", "admission_source_id": 4,
        "number_inpatient": 3, "diag_2": "V45", "insulin": "Up"}).json()  # fmt: skip
    text = page.text()
    assert expected["label"] in text
    assert f"{expected['probability']:.0%}" in text
    assert f"version {served_model.version}" in text
    assert "What moved this patient's risk most" in text
    assert browser.find_elements(By.CSS_SELECTOR, "[data-testid=stVegaLiteChart]"), "the factors' bar chart"
    assert "Traceback" not in text


def test_the_monitoring_page_marks_the_batch_below_the_floor_in_a_browser(ui_server, browser, tmp_path):
    browser.get(f"{ui_server}/monitoring")
    page = PatientForm(browser)
    page.wait.until(lambda _: "Promotions" in page.text())
    text = page.text()
    assert "Live ROC-AUC below the floor 0.60 on batch(es) 3." in text
    assert "Version in service: the version that scored the batch" in text
    page.wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "[data-testid=stVegaLiteChart] canvas, "
                                                                     "[data-testid=stVegaLiteChart] svg"))  # fmt: skip
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=stDataFrame]")) == 2  # batches, promotions
    assert "Traceback" not in text
    page.screenshot(tmp_path / "monitoring.png")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "monitoring.png", SCREENSHOTS / "ui-monitoring.png")
