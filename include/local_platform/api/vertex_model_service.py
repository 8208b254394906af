"""google.cloud.aiplatform.v1.ModelService and EndpointService: requests to resource rules, documents to messages."""

from __future__ import annotations

from google.cloud.aiplatform_v1.types import endpoint as endpoint_types
from google.cloud.aiplatform_v1.types import endpoint_service, model_service
from google.cloud.aiplatform_v1.types import model as model_types
from google.longrunning import operations_pb2

from include.local_platform.api.vertex_grpc import Rpc
from include.local_platform.api.vertex_messages import fill, pb, to_doc, to_message
from include.local_platform.context import Context
from include.local_platform.errors import invalid_argument
from include.local_platform.resources import vertex_endpoints, vertex_models

Model, Endpoint, Operation = pb(model_types.Model), pb(endpoint_types.Endpoint), operations_pb2.Operation
MAX_PAGE = 1000


def page(items: list[dict], request, message_type, field: str):
    """One page of ``items`` (``page_size``, ``page_token`` as an offset), as the list response message."""
    try:
        start = int(request.page_token or 0)
    except ValueError:
        raise invalid_argument("Invalid page_token.", "page_token") from None
    size = request.page_size or MAX_PAGE
    if start < 0 or size < 0:
        raise invalid_argument("page_size and page_token must not be negative.")
    response = message_type()
    for item in items[start:start + min(size, MAX_PAGE)]:
        fill(item, getattr(response, field).add())
    if start + size < len(items):
        response.next_page_token = str(start + size)
    return response


def _operation(doc: dict):
    return to_message(doc, Operation)


def _models() -> dict[str, Rpc]:
    upload = lambda ctx, request: _operation(vertex_models.upload(ctx, request.parent, to_doc(request)))  # noqa: E731
    return {
        "UploadModel": Rpc(pb(model_service.UploadModelRequest), Operation, upload),
        "GetModel": Rpc(pb(model_service.GetModelRequest), Model,
                        lambda ctx, request: to_message(vertex_models.get(ctx, request.name), Model)),
        "ListModels": Rpc(pb(model_service.ListModelsRequest), pb(model_service.ListModelsResponse),
                          lambda ctx, request: page(vertex_models.list_models(ctx, request.parent, request.filter),
                                                    request, pb(model_service.ListModelsResponse), "models")),
        "ListModelVersions": Rpc(
            pb(model_service.ListModelVersionsRequest), pb(model_service.ListModelVersionsResponse),
            lambda ctx, request: page(vertex_models.list_versions(ctx, request.name), request,
                                      pb(model_service.ListModelVersionsResponse), "models")),
        "MergeVersionAliases": Rpc(
            pb(model_service.MergeVersionAliasesRequest), Model,
            lambda ctx, request: to_message(vertex_models.merge_aliases(ctx, request.name,
                                                                        list(request.version_aliases)), Model)),
        "UpdateModel": Rpc(pb(model_service.UpdateModelRequest), Model,
                           lambda ctx, request: to_message(vertex_models.update(
                               ctx, to_doc(request.model), [_camel(p) for p in request.update_mask.paths]), Model)),
        "DeleteModelVersion": Rpc(pb(model_service.DeleteModelVersionRequest), Operation,
                                  lambda ctx, request: _operation(vertex_models.delete_version(ctx, request.name))),
        "DeleteModel": Rpc(pb(model_service.DeleteModelRequest), Operation,
                           lambda ctx, request: _operation(vertex_models.delete_model(ctx, request.name))),
    }


def _deploy(ctx: Context, request) -> object:
    body = to_doc(request)
    return _operation(vertex_endpoints.deploy(ctx, request.endpoint, body.get("deployedModel") or {},
                                              body.get("trafficSplit")))


def _endpoints() -> dict[str, Rpc]:
    get = lambda ctx, request: to_message(vertex_endpoints.get(ctx, request.name), Endpoint)  # noqa: E731
    return {
        "CreateEndpoint": Rpc(pb(endpoint_service.CreateEndpointRequest), Operation,
                              lambda ctx, request: _operation(vertex_endpoints.create(ctx, request.parent,
                                                                                     to_doc(request)))),
        "GetEndpoint": Rpc(pb(endpoint_service.GetEndpointRequest), Endpoint, get),
        "ListEndpoints": Rpc(pb(endpoint_service.ListEndpointsRequest), pb(endpoint_service.ListEndpointsResponse),
                             lambda ctx, request: page(vertex_endpoints.list_endpoints(ctx, request.parent,
                                                                                        request.filter),
                                                       request, pb(endpoint_service.ListEndpointsResponse),
                                                       "endpoints")),
        "UpdateEndpoint": Rpc(pb(endpoint_service.UpdateEndpointRequest), Endpoint,
                              lambda ctx, request: to_message(vertex_endpoints.update(
                                  ctx, to_doc(request.endpoint), [p for path in request.update_mask.paths
                                                                  for p in [_camel(path)]]), Endpoint)),
        "DeleteEndpoint": Rpc(pb(endpoint_service.DeleteEndpointRequest), Operation,
                              lambda ctx, request: _operation(vertex_endpoints.delete(ctx, request.name))),
        "DeployModel": Rpc(pb(endpoint_service.DeployModelRequest), Operation, _deploy),
        "UndeployModel": Rpc(pb(endpoint_service.UndeployModelRequest), Operation,
                             lambda ctx, request: _operation(vertex_endpoints.undeploy(
                                 ctx, request.endpoint, request.deployed_model_id, dict(request.traffic_split)))),
    }


def _camel(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


SERVICES = {"google.cloud.aiplatform.v1.ModelService": _models(),
            "google.cloud.aiplatform.v1.EndpointService": _endpoints()}
