"""WSGI entry point of the EC2 data API: `gunicorn --workers 1 ec2_api.app:app`.

Configured by the environment (DATASET_PATH, BATCH_SIZE, BATCH_INTERVAL_SECONDS); the
logic lives in `readmission.data_api`.
"""

from readmission.data_api import create_app

app = create_app()
