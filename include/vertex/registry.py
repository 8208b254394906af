"""Vertex AI's model registry in the shape the lifecycle's decisions read, through the provider's hooks.

``include.lifecycle`` (the gate, the evaluation, retention, rollback, pins, data periods) asks
an MLEngineHook for models, versions, labels, predictions and active batch jobs. ``Registry``
answers the same calls from Vertex AI: a version is named by its run alias
(``include.vertex.names``), ``isDefault`` is the ``default`` alias, labels are the version's
labels, predictions go to the endpoint that serves the version alone, and the active batch
prediction jobs appear with the version they read. ``upload_version`` adds a version once:
a retried upload finds the version by its alias.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property

from google.api_core.exceptions import AlreadyExists, NotFound
from google.protobuf import field_mask_pb2, json_format

from include.vertex import names
from include.vertex.names import Location

log = logging.getLogger(__name__)
#: Vertex AI job states an ml/v1 caller reads as unfinished (pins: a version read by a running job stays).
ACTIVE_JOB_STATES = {"JOB_STATE_QUEUED": "QUEUED", "JOB_STATE_PENDING": "PREPARING",
                     "JOB_STATE_RUNNING": "RUNNING", "JOB_STATE_CANCELLING": "CANCELLING",
                     "JOB_STATE_UPDATING": "RUNNING"}


def as_dict(message) -> dict:
    """A proto-plus or protobuf message as JSON-shaped dict (lowerCamelCase, as ml/v1 answers)."""
    raw = message._pb if hasattr(message, "_pb") else message
    return json_format.MessageToDict(raw)


class Registry:
    """The MLEngineHook calls ``include.lifecycle`` makes, answered by Vertex AI (see the module)."""

    def __init__(self, *, gcp_conn_id: str, project: str, region: str):
        self.gcp_conn_id = gcp_conn_id
        self.where = Location(project, region)

    @cached_property
    def models(self):
        from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook

        return ModelServiceHook(gcp_conn_id=self.gcp_conn_id)

    @cached_property
    def model_client(self):
        from include.vertex.retrying import retrying

        return retrying(self.models.get_model_service_client(self.where.region))

    # --- what include.lifecycle calls -------------------------------------------------------------

    def get_model(self, *, model_name: str) -> dict | None:
        """The model with its ``defaultVersion`` (ml/v1's shape), or None when it does not exist."""
        try:
            default = self.model_client.get_model(name=self.where.model(model_name))
        except NotFound:
            return None
        version = self._as_version(model_name, as_dict(default))
        return {"name": f"projects/{self.where.project}/models/{model_name}", "defaultVersion": version}

    def get_version(self, *, model_name: str, version_name: str) -> dict | None:
        try:
            found = self.model_client.get_model(name=self.where.version(model_name, version_name))
        except NotFound:
            return None
        return self._as_version(model_name, as_dict(found))

    def list_versions(self, *, model_name: str) -> list[dict]:
        try:
            pages = self.model_client.list_model_versions(name=self.where.model(model_name))
            return [self._as_version(model_name, as_dict(v)) for v in pages]
        except NotFound:
            return []

    def patch_version(self, *, model_name: str, version_name: str, version: dict, update_mask: str) -> dict:
        """Change a version's labels (the only field the lifecycle patches)."""
        if update_mask != "labels":
            raise ValueError(f"only labels are patched on Vertex AI, not {update_mask}")
        updated = self.model_client.update_model(
            model={"name": self.where.version(model_name, version_name), "labels": version.get("labels") or {}},
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]))
        return self._as_version(model_name, as_dict(updated))

    def set_default_version(self, *, model_name: str, version_name: str) -> dict:
        moved = self.model_client.merge_version_aliases(name=self.where.version(model_name, version_name),
                                                        version_aliases=[names.DEFAULT_ALIAS])
        return self._as_version(model_name, as_dict(moved))

    def predict_in_chunks(self, *, model_name: str, version_name: str, instances: list, batch_size: int) -> list:
        """Online predictions of one version, from the endpoint that gives it all of its traffic."""
        from include.vertex import serving

        endpoint = serving.Endpoints(self).serving_alone(model_name, version_name)
        return serving.Endpoints(self).predict(endpoint, instances, batch_size=batch_size)

    def list_jobs(self, *, filter: str) -> list[dict]:
        """Unfinished batch prediction jobs as ml/v1 jobs (``state``, ``predictionInput.versionName``)."""
        from airflow.providers.google.cloud.hooks.vertex_ai.batch_prediction_job import BatchPredictionJobHook

        wanted = filter.partition("=")[2].strip()
        from include.vertex.retrying import retrying

        client = retrying(BatchPredictionJobHook(gcp_conn_id=self.gcp_conn_id).get_job_service_client(
            self.where.region))
        jobs = client.list_batch_prediction_jobs(parent=self.where.parent)
        found = []
        for job in jobs:
            doc = as_dict(job)
            state = ACTIVE_JOB_STATES.get(doc.get("state", ""))
            if state != wanted:
                continue
            model, _, version = doc.get("model", "").partition("@")
            found.append({"jobId": doc["name"].rsplit("/", 1)[-1], "state": state, "predictionInput": {
                "versionName": f"{model}/versions/{names.version_of([version], version)}"}})
        return found

    # --- uploads ------------------------------------------------------------------------------------

    def upload_version(self, *, model_name: str, version_name: str, spec: dict) -> dict:
        """The version ``version_name`` of the model, uploaded from ``spec`` unless it exists (found by alias).

        :param spec: Vertex AI Model fields: ``artifactUri``, ``containerSpec``, ``labels``, ``description``.
        """
        if (found := self.get_version(model_name=model_name, version_name=version_name)) is not None:
            log.info("Version %s of %s already uploaded (Vertex AI version %s); reusing it", version_name,
                     model_name, found["vertexVersionId"])
            return found
        model = {"displayName": model_name, **spec, "versionAliases": [names.alias(version_name)]}
        request = {"parent": self.where.parent, "model": self._model_type().from_json(json.dumps(model))}
        if self.get_model(model_name=model_name) is None:
            request["model_id"] = names.model_id(model_name)
        else:
            request["parent_model"] = self.where.model(model_name)
        try:
            result = self.model_client.upload_model(request=request).result(timeout=600)
        except AlreadyExists:  # a concurrent first upload made the model: add this as its next version
            request.pop("model_id")
            request["parent_model"] = self.where.model(model_name)
            result = self.model_client.upload_model(request=request).result(timeout=600)
        log.info("Uploaded %s as version %s of %s (alias %s)", spec.get("artifactUri"), result.model_version_id,
                 result.model, names.alias(version_name))
        return self.get_version(model_name=model_name, version_name=version_name)

    def delete_version(self, *, model_name: str, version_name: str) -> bool:
        """Delete one version (never the default: Vertex AI refuses); False when it was already gone."""
        try:
            self.model_client.delete_model_version(name=self.where.version(model_name, version_name)).result(
                timeout=300)
        except NotFound:
            return False
        return True

    @staticmethod
    def _model_type():
        from google.cloud.aiplatform_v1.types import Model

        return Model

    def _as_version(self, model_name: str, doc: dict) -> dict:
        """A Vertex AI Model version as an ml/v1 Version (``name`` ends in the lifecycle's version name)."""
        aliases = doc.get("versionAliases", [])
        version = names.version_of(aliases, doc.get("versionId", ""))
        return {
            "name": f"projects/{self.where.project}/models/{model_name}/versions/{version}",
            "state": "READY", "isDefault": names.DEFAULT_ALIAS in aliases, "labels": doc.get("labels", {}),
            "createTime": doc.get("versionCreateTime") or doc.get("createTime", ""),
            "deploymentUri": doc.get("artifactUri", ""), "description": doc.get("description", ""),
            "vertexVersionId": doc.get("versionId", ""), "versionAliases": aliases,
            "deployedModels": doc.get("deployedModels", []),
        }
