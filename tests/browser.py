"""Headless Chromium for the UI tests: the browser (Debian's chromium and chromedriver) and the UI driven as a
clinician drives it. `tests/conftest.py` has the `browser` fixture."""

from __future__ import annotations

from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.servers import free_port

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PREDICT = "Predict readmission risk"


def chromium(profile: Path) -> webdriver.Chrome:
    """Headless Chromium with a fresh profile; every address but 127.0.0.1 goes to a closed proxy port."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-quic",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--proxy-server=http://127.0.0.1:{free_port()}",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)


class PatientForm:
    """The single-patient page, driven the way a clinician does: click, pick, type."""

    def __init__(self, driver, timeout: float = 30):
        # A page being replaced (a rerun, a redirect) leaves stale elements behind: look again.
        self.driver = driver
        self.wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))

    def field(self, column: str):
        return self.wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f".st-key-field-{column} input")))

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def choose(self, column: str, label: str) -> None:
        self.field(column).click()
        self.wait.until(
            ec.element_to_be_clickable((By.XPATH, f"//*[@role='option'][normalize-space()='{label}']"))
        ).click()
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


class SwaggerPage:
    """The inference API's OpenAPI page (Swagger UI), driven as a developer does: Authorize, Try it out, Execute.

    Swagger UI re-renders an operation on each click, so every element is looked up again once it is there.
    """

    PREDICT = "operations-predictions-predict_predict_post"

    def __init__(self, driver, url: str, timeout: float = 30):
        self.driver = driver
        self.wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(url)
        self.wait.until(ec.element_to_be_clickable((By.ID, self.PREDICT)))

    def click(self, css: str) -> None:
        self.wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()

    def authorize(self, key: str) -> None:
        self.click("button.authorize")
        self.wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux input"))).send_keys(key)
        self.click(".modal-ux button.authorize")
        self.click(".modal-ux button.btn-done")
        self.wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))

    def try_predict(self) -> str:
        """Execute POST /predict with its example body; the status code the page shows."""
        operation = f"#{self.PREDICT}"
        if not self.driver.find_elements(By.CSS_SELECTOR, f"{operation}.is-open"):
            self.click(f"{operation} .opblock-summary")
        if not self.driver.find_elements(By.CSS_SELECTOR, f"{operation} button.try-out__btn.cancel"):
            self.click(f"{operation} button.try-out__btn")
        for _ in self.driver.find_elements(By.CSS_SELECTOR, f"{operation} button.btn-clear"):
            self.click(f"{operation} button.btn-clear")
        self.wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, f"{operation} .live-responses-table")))
        self.click(f"{operation} button.execute")
        status = (By.CSS_SELECTOR, f"{operation} .live-responses-table .response .response-col_status")
        return self.wait.until(lambda _: self.driver.find_element(*status).text.strip() or False)

    def response_body(self) -> str:
        return self.driver.find_element(By.CSS_SELECTOR, f"#{self.PREDICT} .live-responses-table .microlight").text
