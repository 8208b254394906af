"""The trainer as a Vertex AI Python package training pipeline, started once per run.

The provider's ``CreateCustomPythonPackageTrainingJobOperator`` starts a new pipeline on every
try, and importing it costs ~6 s of CPU (the aiplatform SDK), too much for every DAG parse.
``VertexTrainingJobOperator`` is light at parse time; when it runs it looks for the newest
pipeline of the same display name (the run's training job id, as on ml/v1) and reuses it: a
succeeded one is done, a running one is waited for. Only when there is none, or the last one
failed or was cancelled, does it run the provider's operator to start another.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from airflow.sdk import BaseOperator

ENDED = {"PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED"}


class VertexTrainingJobOperator(BaseOperator):
    """A Python package training pipeline of ``python_package_gcs_uri``, once per ``display_name`` (see the module).

    :param project_id: the project.
    :param region: the region.
    :param display_name: the pipeline's display name: the run's training job id.
    :param python_package_gcs_uri: the trainer sdist on GCS.
    :param python_module_name: the module the pipeline runs (``trainer.task``).
    :param container_uri: the prebuilt training container.
    :param args: the trainer's arguments.
    :param staging_bucket: where the SDK stages its files.
    :param machine_type: the worker's machine type.
    :param labels: labels of the pipeline.
    :param gcp_conn_id: the connection.
    :param poll_interval: seconds between looks at a running pipeline an earlier try started.
    """

    template_fields: Sequence[str] = ("display_name", "python_package_gcs_uri", "args", "labels", "region",
                                      "project_id", "gcp_conn_id")

    def __init__(self, *, project_id: str, region: str, display_name: str, python_package_gcs_uri: str,
                 python_module_name: str, container_uri: str, args: list, staging_bucket: str,
                 machine_type: str = "n1-standard-4", labels: dict | None = None,
                 gcp_conn_id: str = "google_cloud_default", poll_interval: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.project_id, self.region, self.display_name = project_id, region, display_name
        self.python_package_gcs_uri, self.python_module_name = python_package_gcs_uri, python_module_name
        self.container_uri, self.args, self.staging_bucket = container_uri, args, staging_bucket
        self.machine_type, self.labels, self.gcp_conn_id = machine_type, labels or {}, gcp_conn_id
        self.poll_interval = poll_interval

    def execute(self, context):
        found = self._newest()
        while found is not None and found["state"] not in ENDED:
            self.log.info("Training pipeline %s of an earlier try is %s; waiting for it", found["name"],
                          found["state"])
            time.sleep(self.poll_interval)
            found = self._newest()
        if found is not None and found["state"] == "PIPELINE_STATE_SUCCEEDED":
            self.log.info("Training pipeline %s (%s) already succeeded; reusing it", found["name"], self.display_name)
            return {"training_id": found["name"].rsplit("/", 1)[-1], "state": found["state"]}
        if found is not None:
            self.log.warning("The last training pipeline %s ended %s: starting a new one", found["name"],
                             found["state"])
        try:
            return self._start(context)
        except Exception as error:  # the SDK's start or its polling met a failed call: the pipeline may run on
            if self._newest() in (None, found):
                raise
            self.log.warning("Waiting on the started pipeline after a failed call (%s)", error)
            return self.execute(context)

    def _start(self, context) -> dict:
        from airflow.providers.google.cloud.operators.vertex_ai.custom_job import (
            CreateCustomPythonPackageTrainingJobOperator,
        )

        provider = CreateCustomPythonPackageTrainingJobOperator(
            task_id=self.task_id, project_id=self.project_id, region=self.region, display_name=self.display_name,
            python_package_gcs_uri=self.python_package_gcs_uri, python_module_name=self.python_module_name,
            container_uri=self.container_uri, args=[str(arg) for arg in self.args],
            staging_bucket=self.staging_bucket, machine_type=self.machine_type, replica_count=1,
            labels=self.labels, gcp_conn_id=self.gcp_conn_id)
        provider.execute(context)
        found = self._newest() or {}
        self.log.info("Training pipeline %s: %s", found.get("name"), found.get("state"))
        return {"training_id": found.get("name", "").rsplit("/", 1)[-1], "state": found.get("state")}

    def _newest(self) -> dict | None:
        from airflow.providers.google.cloud.hooks.vertex_ai.custom_job import CustomJobHook
        from google.protobuf import json_format

        from include.vertex.retrying import retrying

        client = retrying(CustomJobHook(gcp_conn_id=self.gcp_conn_id).get_pipeline_service_client(self.region))
        pipelines = client.list_training_pipelines(request={
            "parent": f"projects/{self.project_id}/locations/{self.region}",
            "filter": f'display_name="{self.display_name}"'})
        found = [json_format.MessageToDict(p._pb) for p in pipelines if p.display_name == self.display_name]
        return max(found, key=lambda p: p.get("createTime", ""), default=None)
