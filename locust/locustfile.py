"""Load test of the inference service; the logic is `readmission.loadtest_locust`.

    locust -f locust/locustfile.py --headless          # or `make loadtest`

Clinicians send single predictions, other systems send batches, monitors check health and
the model; LOADTEST_SHAPE picks the constant load or the step-wise capacity search, and the
exit code is non-zero when an SLO (SLO_MAX_FAILURE_RATIO, SLO_P95_PREDICT_MS) broke.
The settings are read here, once, when Locust loads this file.
"""

from readmission.config import Settings
from readmission.loadtest_locust import locust_classes

Clinician, BatchSystem, Monitor, LoadShape = locust_classes(Settings())
