"""The clinician UI in a real browser: headless Chromium fills the form of the running UI server.

The UI runs as the image runs it (the Dockerfile's own CMD, on 127.0.0.1) against the real
inference API; Chromium reaches nothing beyond 127.0.0.1. The screenshot of the answered
form is kept under `reports/screenshots/` for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from readmission.config import Settings
from readmission.serving.schemas import RISK_LABELS
from readmission.ui import forms, ui_environment
from tests.servers import REPO_ROOT, ServerProcess, free_port, image_command, run_locally

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DOCKERFILE = REPO_ROOT / "streamlit" / "Dockerfile"
SCREENSHOTS = REPO_ROOT / "reports" / "screenshots"
PREDICT = "Predict readmission risk"


@pytest.fixture(scope="module")
def ui_server(served_model, tmp_path_factory):
    """The UI server, started with its image's command, talking to the real API; its URL."""
    folder = tmp_path_factory.mktemp("ui")
    settings = Settings(_env_file=None, data_dir=folder, api_url=served_model.url,
                        mlflow_tracking_uri=served_model.registry.mlflow_tracking_uri)  # fmt: skip
    port = free_port()
    server = ServerProcess(run_locally(image_command(DOCKERFILE), DOCKERFILE, port),
                           f"http://127.0.0.1:{port}/_stcore/health", folder / "streamlit.log",
                           env=ui_environment(settings), cwd=REPO_ROOT).start()  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a fresh profile; every address but 127.0.0.1 goes to a closed proxy port."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("`make test` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
                     "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                     f"--proxy-server=http://127.0.0.1:{free_port()}", "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


class PatientForm:
    """The single-patient page, driven the way a clinician does: click, pick, type."""

    def __init__(self, driver, timeout: float = 30):
        self.driver, self.wait = driver, WebDriverWait(driver, timeout)

    def field(self, column: str):
        return self.wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f".st-key-field-{column} input")))

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def choose(self, column: str, label: str) -> None:
        self.field(column).click()
        self.wait.until(ec.element_to_be_clickable((By.XPATH, f"//*[@role='option'][normalize-space()='{label}']"))).click()
        self.wait.until(lambda _: self.field(column).get_attribute("value") == label)

    def type(self, column: str, value: str) -> None:
        box = self.field(column)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.ENTER)
        self.wait.until(lambda _: self.field(column).get_attribute("value") == value)

    def open_section(self, title: str) -> None:
        self.wait.until(ec.element_to_be_clickable((By.XPATH, f"//summary[contains(., '{title}')]"))).click()

    def predict(self) -> None:
        button = (By.XPATH, f"//button[normalize-space()='{PREDICT}' or .//p[normalize-space()='{PREDICT}']]")
        self.wait.until(ec.element_to_be_clickable(button)).click()

    def screenshot(self, path: Path) -> None:
        """The whole page, not only the window: the window is stretched to the page's height first."""
        height = self.driver.execute_script("return document.querySelector('[data-testid=stMain]').scrollHeight")
        self.driver.set_window_size(1400, height + 120)
        self.wait.until(lambda _: self.driver.execute_script("return document.readyState") == "complete")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))


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
    assert "Traceback" not in text
