"""PredictionService.Predict, google.longrunning.Operations and Resource Manager's GetProject.

Predict: the endpoint's traffic split picks a deployed model version; its SavedModel (loaded
on first use from the local copy its deployment made) predicts the instances by the same rules
as ml/v1 (JSON values, ``{"b64": ...}``, gs:// URLs for ``*_url`` inputs), batched with the
concurrent calls on that version (``serving.batching``) unless it stages files. As TensorFlow
Serving (Vertex AI's prebuilt TF containers) answers, a model with one output gets its values
as predictions, one with several gets an object per instance. Instances the model cannot take
fail the request with INVALID_ARGUMENT and the model's message (TF Serving answers 400 for the
whole request).

GetProject answers the aiplatform SDK's project-number lookup (it asks Resource Manager when
``GOOGLE_CLOUD_PROJECT`` is set): the local service has no numbers, the id is the name.
"""

from __future__ import annotations

import orjson
from google.cloud.aiplatform_v1.types import prediction_service
from google.cloud.resourcemanager_v3.types import projects as rm_projects
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from include.local_platform.api.vertex_grpc import Rpc
from include.local_platform.api.vertex_messages import pb, python, to_message, values
from include.local_platform.context import Context
from include.local_platform.errors import ApiError, PredictionError, invalid_argument
from include.local_platform.resources import artifacts, vertex_endpoints, vertex_operations
from include.local_platform.serving import batching, prediction
from include.local_platform.serving.numeric_json import dumps
from include.local_platform.serving.saved_model import BadModel
from include.local_platform.serving.tensors import prepare

PredictRequest, PredictResponse = pb(prediction_service.PredictRequest), pb(prediction_service.PredictResponse)
MAX_INSTANCES = 10_000


def predict(ctx: Context, request) -> object:
    # both reads are kept until the next write anywhere (no database round trip per call on PostgreSQL)
    endpoint = ctx.store.memo(("vertex endpoint", request.endpoint),
                              lambda: vertex_endpoints.get(ctx, request.endpoint))
    if not request.instances:
        raise invalid_argument("instances must not be empty.", "instances")
    if len(request.instances) > MAX_INSTANCES:
        raise invalid_argument(f"At most {MAX_INSTANCES} instances per request.", "instances")
    deployed = vertex_endpoints.choose(endpoint)
    key = f"{deployed['model']}@{deployed['modelVersionId']}"
    version = ctx.store.memo(("vertex version", key), lambda: ctx.store.get(key)) or {}
    try:
        signature = ctx.models.get(key, artifacts.local_dir(ctx, version)).signature(None)
        instances = [python(value) for value in request.instances]
        if signature.stages_files or ctx.event_loop is None:  # staged files: a call of its own, not batched
            staging = ctx.scratch_dir if signature.stages_files else None
            rows = prediction.predict(signature, instances, staging)
        else:  # joins the concurrent calls on this deployed version
            batcher = batching.batcher_for(key, signature, ctx.batching, ctx.batch_threads)
            rows = batcher.predict_from_thread(prepare(signature, instances), ctx.event_loop)
    except PredictionError as error:
        raise invalid_argument(str(error)) from None
    except (BadModel, KeyError) as error:
        raise ApiError(500, "INTERNAL", f"Deployed model {deployed['id']} cannot serve: {error}") from None
    plain = orjson.loads(dumps(rows))
    if plain and all(len(row) == 1 for row in plain):
        plain = [next(iter(row.values())) for row in plain]
    response = PredictResponse(deployed_model_id=deployed["id"], model=deployed["model"],
                               model_version_id=deployed["modelVersionId"],
                               model_display_name=version.get("displayName", ""))
    response.predictions.extend(values(plain))
    return response


def _get_operation(ctx: Context, request) -> object:
    return to_message(vertex_operations.get(ctx, request.name), operations_pb2.Operation)


def _cancel_operation(ctx: Context, request) -> object:
    vertex_operations.cancel(ctx, request.name)
    return empty_pb2.Empty()


def _delete_operation(ctx: Context, request) -> object:
    vertex_operations.delete(ctx, request.name)
    return empty_pb2.Empty()


def _get_project(ctx: Context, request) -> object:
    project = request.name.split("/", 1)[-1]
    return pb(rm_projects.Project)(name=f"projects/{project}", project_id=project, state=1, display_name=project)


SERVICES = {
    "google.cloud.aiplatform.v1.PredictionService": {"Predict": Rpc(PredictRequest, PredictResponse, predict)},
    "google.longrunning.Operations": {
        "GetOperation": Rpc(operations_pb2.GetOperationRequest, operations_pb2.Operation, _get_operation),
        "CancelOperation": Rpc(operations_pb2.CancelOperationRequest, empty_pb2.Empty, _cancel_operation),
        "DeleteOperation": Rpc(operations_pb2.DeleteOperationRequest, empty_pb2.Empty, _delete_operation),
    },
    "google.cloud.resourcemanager.v3.Projects": {
        "GetProject": Rpc(pb(rm_projects.GetProjectRequest), pb(rm_projects.Project), _get_project)},
}
