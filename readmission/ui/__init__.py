"""The Streamlit clinician UI: single-patient form, batch scoring, model report card.

`streamlit/app.py` is the entry point (`main()` of `readmission.ui.app`); `serve(settings)`
starts it as a server the way the Docker image does, for `make demo` and the browser test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from readmission.config import Settings

APP_SCRIPT = Path("streamlit") / "app.py"  # relative to the project root, as in the image's WORKDIR


def ui_command(port: int, address: str, executable: str = "streamlit") -> list[str]:
    """The command that serves the UI (the image's CMD with port 8501 and address 0.0.0.0)."""
    return [
        executable,
        "run",
        str(APP_SCRIPT),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
    ]


def ui_environment(settings: Settings) -> dict[str, str]:
    """The settings the UI process reads, as environment variables over the current environment."""
    names = (
        "api_url",
        "api_timeout_seconds",
        "max_batch_rows",
        "mlflow_tracking_uri",
        "mlflow_ui_url",
        "api_key",
        "ui_sign_in",
        "ui_allowed_domains",
        "ui_allowed_groups",
        "ui_groups_claim",
        "raw_db_url",  # the Monitoring page reads the batch log, the predictions and the registry
        "clean_db_url",
        "model_name",
        "model_alias",
        "promotion_min_auc",
        "risk_medium_threshold",
        "risk_high_threshold",
    )
    values = {name: getattr(settings, name) for name in names}
    return {
        **os.environ,
        **{name.upper(): str(v.get_secret_value() if isinstance(v, SecretStr) else v) for name, v in values.items()},
    }


def project_root() -> Path:
    """The folder holding `streamlit/app.py` (and `.streamlit/config.toml`): the current one, or the checkout's."""
    for folder in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (folder / APP_SCRIPT).is_file():
            return folder
    raise FileNotFoundError(f"{APP_SCRIPT} not found: start the UI from the project's root folder")


def ui_url(settings: Settings) -> str:
    """Where a browser on this machine finds the UI."""
    host = "127.0.0.1" if settings.ui_host in ("0.0.0.0", "") else settings.ui_host
    return f"http://{host}:{settings.ui_port}"


def serve(settings: Settings, log_path: Path | None = None) -> subprocess.Popen:
    """Start the UI server on `UI_HOST:UI_PORT`, talking to `API_URL`; returns the running process.

    The process runs until stopped (`.terminate()`); `ui_url(settings)` is its address and
    `<url>/_stcore/health` answers `ok` once it is up. Output goes to `log_path` when given, and then
    the server runs in a session of its own, as the platform's other background servers do: a Ctrl-C
    in the terminal reaches the caller alone, which stops it (otherwise the UI could stop first and
    the caller take that for a crash).
    """
    command = ui_command(settings.ui_port, settings.ui_host, str(Path(sys.executable).parent / "streamlit"))
    root, environment = project_root(), ui_environment(settings)
    if log_path is None:
        return subprocess.Popen(command, cwd=root, env=environment)
    with open(log_path, "ab") as log:  # the child keeps its own handle
        return subprocess.Popen(
            command, cwd=root, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
