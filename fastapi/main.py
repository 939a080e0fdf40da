"""The inference service's ASGI app, for any ASGI server (e.g. `uvicorn --app-dir fastapi main:app`).

Production runs `python -m readmission.serving.server`: gunicorn with several uvicorn workers.
"""

from readmission.serving.app import create_app

app = create_app()
