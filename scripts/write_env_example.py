"""Write `.env.example` from the Settings class, so the list of variables can never drift.

Run: .venv/bin/python scripts/write_env_example.py  (tests/test_config.py checks the result)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from readmission.config import Settings

HEADER = """# Every setting of the platform, with its default. Copy to `.env` and change what you need.
# Empty store URLs mean the embedded defaults: SQLite files and a local MLflow store under DATA_DIR.
# Secrets (RELOAD_TOKEN, AWS keys, database passwords inside URLs) belong in `.env`, never in git.
"""


def render() -> str:
    """The file's text: one `NAME=default` line per setting, preceded by its description."""
    lines = [HEADER]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = ""
        if field.description:
            lines.append(f"# {field.description}")
        lines.append(f"{name.upper()}={'' if default is None else default}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    Path(__file__).resolve().parents[1].joinpath(".env.example").write_text(render())
