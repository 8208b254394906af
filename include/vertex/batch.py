"""Batch prediction on Vertex AI, one job per DAG run, waited for in the triggerer.

``VertexBatchPredictionOperator`` is light at parse time (the provider's batch operator
imports the aiplatform SDK: ~6 s of CPU per parse). When it runs it looks for the newest job
with the run's display name (the job id, as on ml/v1) and reuses it: a succeeded job is done,
a running one is waited for; else it creates the job with the provider hook's client. The
wait defers to the provider's ``CreateBatchPredictionJobTrigger``, so it holds no worker slot.
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

SUCCEEDED, ENDED_BADLY = "JOB_STATE_SUCCEEDED", {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


class VertexBatchPredictionOperator(BaseOperator):
    """One Vertex AI batch prediction job per ``job_display_name`` (see the module); returns the job as a dict.

    :param project_id: the project.
    :param region: the region.
    :param job_display_name: the run's job id.
    :param model_name: the model version to predict with, ``projects/.../models/M@<alias>``.
    :param gcs_source: the input files.
    :param instances_format: ``jsonl`` or ``tf-record``.
    :param gcs_destination_prefix: where the job writes its ``prediction-<model>-<time>/`` folder.
    :param machine_type: the machine of each replica.
    :param labels: labels of the job.
    :param gcp_conn_id: the connection.
    :param poll_interval: seconds between the trigger's looks at the job.
    """

    template_fields: Sequence[str] = ("job_display_name", "model_name", "gcs_source", "instances_format",
                                      "gcs_destination_prefix", "labels", "project_id", "region", "gcp_conn_id")

    def __init__(self, *, project_id: str, region: str, job_display_name: str, model_name: str,
                 gcs_source: list, instances_format: str, gcs_destination_prefix: str,
                 machine_type: str = "n1-standard-2", labels: dict | None = None,
                 gcp_conn_id: str = "google_cloud_default", poll_interval: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.project_id, self.region, self.job_display_name = project_id, region, job_display_name
        self.model_name, self.gcs_source, self.instances_format = model_name, gcs_source, instances_format
        self.gcs_destination_prefix, self.machine_type = gcs_destination_prefix, machine_type
        self.labels, self.gcp_conn_id, self.poll_interval = labels or {}, gcp_conn_id, poll_interval

    def execute(self, context):
        found = self._newest()
        if found is not None and found["state"] == SUCCEEDED:
            self.log.info("Batch prediction job %s (%s) already succeeded; reusing it", found["name"],
                          self.job_display_name)
            return found
        if found is None or found["state"] in ENDED_BADLY:
            if found is not None:
                self.log.warning("The last job %s ended %s: starting a new one", found["name"], found["state"])
            found = self._create()
        self.log.info("Batch prediction job %s is %s; waiting in the triggerer", found["name"], found["state"])
        from airflow.providers.google.cloud.triggers.vertex_ai import CreateBatchPredictionJobTrigger

        self.defer(trigger=CreateBatchPredictionJobTrigger(
            conn_id=self.gcp_conn_id, project_id=self.project_id, location=self.region,
            job_id=found["name"].rsplit("/", 1)[-1], poll_interval=self.poll_interval), method_name="execute_complete")

    def execute_complete(self, context, event: dict) -> dict:
        """The trigger's verdict, checked against the job itself: a trigger that lost its job to a failed call
        does not fail a job that still runs (it is waited for again) or that succeeded."""
        found = self._newest()
        if event.get("status") != "success" and found is not None and found["state"] not in ENDED_BADLY | {
                SUCCEEDED}:
            self.log.warning("The trigger stopped (%s) but job %s is %s: waiting again", event.get("message"),
                             found["name"], found["state"])
            return self.execute(context)
        if found is None or found["state"] != SUCCEEDED:
            raise AirflowException(f"Batch prediction job {self.job_display_name}: {event.get('message')}")
        self.log.info("Batch prediction job %s: %s, %s", found["name"], found["state"],
                      found.get("completionStats", {}))
        return found

    def _client(self):
        from airflow.providers.google.cloud.hooks.vertex_ai.batch_prediction_job import BatchPredictionJobHook

        from include.vertex.retrying import retrying

        return retrying(BatchPredictionJobHook(gcp_conn_id=self.gcp_conn_id).get_job_service_client(self.region))

    def _create(self) -> dict:
        from google.protobuf import json_format

        job = self._client().create_batch_prediction_job(
            parent=f"projects/{self.project_id}/locations/{self.region}",
            batch_prediction_job={
                "display_name": self.job_display_name, "model": self.model_name, "labels": self.labels,
                "input_config": {"instances_format": self.instances_format,
                                 "gcs_source": {"uris": list(self.gcs_source)}},
                "output_config": {"predictions_format": "jsonl",
                                  "gcs_destination": {"output_uri_prefix": self.gcs_destination_prefix}},
                "dedicated_resources": {"machine_spec": {"machine_type": self.machine_type},
                                        "starting_replica_count": 1, "max_replica_count": 1}})
        self.log.info("Created batch prediction job %s on %s", job.name, self.model_name)
        return json_format.MessageToDict(job._pb)

    def _newest(self) -> dict | None:
        from google.protobuf import json_format

        jobs = self._client().list_batch_prediction_jobs(request={
            "parent": f"projects/{self.project_id}/locations/{self.region}",
            "filter": f'display_name="{self.job_display_name}"'})
        found = [json_format.MessageToDict(job._pb) for job in jobs if job.display_name == self.job_display_name]
        return max(found, key=lambda job: job.get("createTime", ""), default=None)
