# The project's Airflow image for docker-compose.yaml: the official Airflow 3 image plus requirements.txt
# (TensorFlow, the Google provider, the GCS emulator, the ml/v1 service's FastAPI/uvicorn) and the project.
# Same versions as the local .venv: requirements.txt pins apache-airflow==3.3.2, constraints.txt the rest.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ENV PYTHONPATH=/opt/airflow:/opt/airflow/plugins \
    TF_CPP_MIN_LOG_LEVEL=2

# The unprivileged user the ml/v1 service runs training jobs as (docs/security.md, "Training code").
USER root
RUN useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ml-trainer
USER airflow

COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt -c /opt/airflow/constraints.txt

# The project itself; docker-compose.yaml also mounts dags/, plugins/ and include/ over these for live edits.
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 include /opt/airflow/include
