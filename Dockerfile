# The Airflow image: the official image, pinned, plus the project's requirements, the
# `readmission` package and the DAGs. Build from the repository root:
#   docker build -t readmission-airflow .
# Configuration (database URLs, MLflow, S3, tokens) comes from the environment or Airflow
# connections at run time; nothing secret is baked in.
FROM apache/airflow:3.3.2-python3.11

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The official image installs Python packages as its non-root `airflow` user, uid 50000 (numeric,
# so Kubernetes' runAsNonRoot can verify it). Airflow is named with its own version so pip can
# never up- or downgrade it while resolving the requirements.
USER 50000
COPY --chown=airflow:root requirements.txt /opt/readmission/requirements.txt
RUN pip install "apache-airflow==${AIRFLOW_VERSION}" -r /opt/readmission/requirements.txt

# The package last, without dependencies (requirements.txt pins them), so a code change
# does not reinstall the dependency layer.
COPY --chown=airflow:root pyproject.toml README.md /opt/readmission/
COPY --chown=airflow:root readmission /opt/readmission/readmission
RUN pip install --no-deps /opt/readmission

COPY --chown=airflow:root dags/ /opt/airflow/dags/

ENV AIRFLOW__CORE__LOAD_EXAMPLES=False \
    DATA_DIR=/opt/airflow/data
