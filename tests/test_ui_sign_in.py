"""Clinicians sign in: headless Chromium against the UI (its image's command) with sign-in on, a real OpenID
Connect provider process (oidc-provider-mock from PyPI) on 127.0.0.1, and the inference API requiring keys.

The provider knows two users: alice@hospital.example, whose domain is allowed, and mallory, whose
address is elsewhere. The UI presents its own API key; the API accepts no other.
"""

from __future__ import annotations

import json
import secrets

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from readmission.config import Settings
from readmission.serving.auth import new_key
from readmission.serving.schemas import RISK_LABELS
from readmission.ui import ui_environment
from tests.browser import PREDICT, PatientForm
from tests.factories import register_model
from tests.servers import (
    REPO_ROOT,
    VENV_BIN,
    ServerProcess,
    free_port,
    image_command,
    run_locally,
    start_inference_api,
)

pytestmark = pytest.mark.servers

DOCKERFILE = REPO_ROOT / "streamlit" / "Dockerfile"
USERS = {
    "alice": {"sub": "alice", "email": "alice@hospital.example", "email_verified": True, "name": "Alice Doe"},
    "mallory": {"sub": "mallory", "email": "mallory@elsewhere.example", "email_verified": True, "groups": ["visitors"]},
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> str:
    """A running OpenID Connect provider with the two users; its issuer URL."""
    port = free_port()
    arguments = [str(VENV_BIN / "oidc-provider-mock"), "--host", "127.0.0.1", "--port", str(port)]
    for claims in USERS.values():
        arguments += ["--user-claims", json.dumps(claims)]
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        arguments,
        f"{url}/.well-known/openid-configuration",
        tmp_path_factory.mktemp("oidc") / "provider.log",
        env={"AUTHLIB_INSECURE_TRANSPORT": "1"},
    ).start()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def ui_key() -> tuple[str, str]:
    return new_key("ui")


@pytest.fixture(scope="module")
def guarded_api(ui_key, tmp_path_factory) -> str:
    """The inference API accepting only the UI's key."""
    settings = Settings(_env_file=None, data_dir=tmp_path_factory.mktemp("sign-in-registry"))
    register_model(settings)
    server, url = start_inference_api(
        {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "API_KEYS": ui_key[1], "REQUIRE_API_KEYS": "true"},
        tmp_path_factory.mktemp("sign-in-api"),
    )
    yield url
    server.stop()


@pytest.fixture(scope="module")
def ui_server(provider, guarded_api, ui_key, tmp_path_factory) -> str:
    """The UI with sign-in on, hospital.example allowed; `[auth]` in ~/.streamlit/secrets.toml of its own HOME."""
    home = tmp_path_factory.mktemp("ui-home")
    port = free_port()
    (home / ".streamlit").mkdir()
    (home / ".streamlit" / "secrets.toml").write_text(f"""[auth]
redirect_uri = "http://127.0.0.1:{port}/oauth2callback"
cookie_secret = "{secrets.token_urlsafe(32)}"
client_id = "readmission-ui"
client_secret = "{secrets.token_urlsafe(32)}"
server_metadata_url = "{provider}/.well-known/openid-configuration"
""")
    settings = Settings(
        _env_file=None,
        data_dir=home,
        api_url=guarded_api,
        api_key=ui_key[0],
        ui_sign_in=True,
        ui_allowed_domains="hospital.example",
        ui_allowed_groups="clinicians",
    )
    server = ServerProcess(
        run_locally(image_command(DOCKERFILE), DOCKERFILE, port),
        f"http://127.0.0.1:{port}/_stcore/health",
        home / "streamlit.log",
        env={**ui_environment(settings), "HOME": str(home)},
        cwd=REPO_ROOT,
    ).start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def click_button(page: PatientForm, label: str) -> None:
    button = (By.XPATH, f"//button[normalize-space()='{label}' or .//p[normalize-space()='{label}']]")
    page.wait.until(ec.element_to_be_clickable(button)).click()


def sign_in(page: PatientForm, ui_server: str, user: str) -> None:
    """From the UI's sign-in page through the provider's form, as `user`, back to the UI."""
    page.driver.get(ui_server)
    page.wait.until(lambda _: "Sign in with your hospital account" in page.text())
    click_button(page, "Sign in")
    page.wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"button[name='sub'][value='{user}']"))).click()
    page.wait.until(lambda driver: driver.current_url.startswith(ui_server))


def test_signed_out_there_is_no_form_and_no_model_page(ui_server, browser):
    page = PatientForm(browser)
    for path in ("", "/model", "/batch"):
        browser.get(f"{ui_server}{path}")
        page.wait.until(lambda _: "Sign in with your hospital account" in page.text())
        text = page.text()
        assert PREDICT not in text and "Model" not in text.replace("Readmission", "")
        assert not browser.find_elements(By.CSS_SELECTOR, ".st-key-field-age")


def test_a_clinician_signs_in_predicts_with_the_uis_key_and_signs_out(ui_server, browser):
    page = PatientForm(browser)
    sign_in(page, ui_server, "alice")
    page.wait.until(lambda _: PREDICT in page.text())
    assert "Signed in as alice@hospital.example" in page.text()

    page.type("number_inpatient", "2")
    page.predict()
    page.wait.until(lambda _: any(label in page.text() for label in RISK_LABELS.values()))
    assert "refused this application's key" not in page.text() and "Traceback" not in page.text()

    click_button(page, "Sign out")
    page.wait.until(lambda driver: "End session" in page.text() or "Sign in with your hospital account" in page.text())
    if "End session" in page.text():  # the provider's own sign-out page
        click_button(page, "End session")
    page.wait.until(lambda _: "Sign in with your hospital account" in page.text())
    assert PREDICT not in page.text() and "alice@hospital.example" not in page.text()
    browser.get(ui_server)  # a new visit: the identity cookie is gone
    page.wait.until(lambda _: "Sign in with your hospital account" in page.text())
    assert PREDICT not in page.text()


def test_a_user_outside_the_allow_list_is_refused(ui_server, browser):
    page = PatientForm(browser)
    sign_in(page, ui_server, "mallory")
    page.wait.until(lambda _: "may not use this application" in page.text())
    assert "mallory@elsewhere.example" in page.text()
    assert PREDICT not in page.text() and not browser.find_elements(By.CSS_SELECTOR, ".st-key-field-age")
