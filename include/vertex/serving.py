"""Vertex AI endpoints for the lifecycle: find or create, deploy a version once, move traffic, undeploy, predict.

ml/v1 served every version at its own URL; Vertex AI serves through endpoints that split
traffic between deployed versions. Each model has a serving endpoint (``<model>-serving``)
and, per variant, a staging endpoint (``<model>-staging-<variant>``) where a candidate is
smoke-tested and evaluated before it takes any traffic. Every call is idempotent: a version
already deployed on an endpoint is found by its model version, not deployed twice, and a
traffic change that is already in place changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

from google.api_core.exceptions import AlreadyExists, NotFound
from google.protobuf import field_mask_pb2, json_format

from include.vertex import names
from include.vertex.registry import Registry, as_dict

log = logging.getLogger(__name__)
SERVING = "serving"
OPERATION_TIMEOUT_S = 1800


def staging(variant: str) -> str:
    """The staging endpoint's role for a variant."""
    return f"staging-{variant}"


@dataclass(frozen=True)
class Deployed:
    """One version on one endpoint: the deployed model's id and its share of the traffic."""

    endpoint: str
    deployed_id: str
    version: str
    share: int


class Endpoints:
    """The endpoints of the models in ``registry``'s project and region."""

    def __init__(self, registry: Registry, *, machine_type: str = "n1-standard-2"):
        self.registry, self.where, self.machine_type = registry, registry.where, machine_type

    @cached_property
    def hook(self):
        from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import EndpointServiceHook

        return EndpointServiceHook(gcp_conn_id=self.registry.gcp_conn_id)

    @cached_property
    def client(self):
        from include.vertex.retrying import retrying

        return retrying(self.hook.get_endpoint_service_client(self.where.region))

    def ensure(self, model: str, role: str) -> dict:
        """The endpoint ``<model>-<role>``, created when missing."""
        name = self.where.endpoint(model, role)
        try:
            return as_dict(self.client.get_endpoint(name=name))
        except NotFound:
            pass
        try:
            self.client.create_endpoint(parent=self.where.parent,
                                        endpoint={"display_name": names.endpoint_id(model, role),
                                                  "labels": {"model": names.model_id(model), "role": role}},
                                        endpoint_id=names.endpoint_id(model, role)).result(timeout=300)
            log.info("Created endpoint %s", name)
        except AlreadyExists:
            pass
        return as_dict(self.client.get_endpoint(name=name))

    def get(self, model: str, role: str) -> dict | None:
        try:
            return as_dict(self.client.get_endpoint(name=self.where.endpoint(model, role)))
        except NotFound:
            return None

    def deployments(self, endpoint: dict) -> list[Deployed]:
        """What an endpoint serves: each deployed version with its share of the traffic."""
        split = endpoint.get("trafficSplit", {})
        found = []
        for deployed in endpoint.get("deployedModels", []):
            version = self.registry.get_version(model_name=deployed["model"].rsplit("/", 1)[-1],
                                                version_name=deployed.get("modelVersionId", ""))
            name = version["name"].rsplit("/", 1)[-1] if version else deployed.get("modelVersionId", "")
            found.append(Deployed(endpoint["name"], deployed["id"], name, int(split.get(deployed["id"], 0))))
        return found

    def deploy(self, model: str, version: str, role: str, *, share: int) -> Deployed:
        """``version`` on the endpoint ``<model>-<role>`` with ``share`` percent of its traffic (the others keep
        theirs in proportion; ``share`` 100: all of it). Already there: only the traffic is set."""
        endpoint = self.ensure(model, role)
        current = {d.version: d for d in self.deployments(endpoint)}
        if version in current:
            return self.route(model, role, {version: share}) or current[version]
        others = self._scaled({d.deployed_id: d.share for d in current.values()}, 100 - share)
        found = self.registry.get_version(model_name=model, version_name=version)
        if found is None:
            raise NotFound(f"Version {version} of model {model} does not exist on Vertex AI")
        deployed_model = {"model": self.where.version(model, version), "display_name": names.alias(version),
                          "dedicated_resources": {"machine_spec": {"machine_type": self.machine_type},
                                                  "min_replica_count": 1, "max_replica_count": 1}}
        self.client.deploy_model(endpoint=endpoint["name"], deployed_model=deployed_model,
                                 traffic_split={**others, "0": share} if share else None).result(
            timeout=OPERATION_TIMEOUT_S)
        log.info("Deployed %s to %s with %s%% of its traffic", version, endpoint["name"], share)
        return next(d for d in self.deployments(self.ensure(model, role)) if d.version == version)

    def route(self, model: str, role: str, shares: dict[str, int]) -> Deployed | None:
        """Give the versions in ``shares`` those percentages, the rest of the endpoint's versions the remainder in
        proportion (0 when nothing remains); the first named version's deployment after."""
        endpoint = self.ensure(model, role)
        current = self.deployments(endpoint)
        by_version = {d.version: d for d in current}
        fixed = {by_version[v].deployed_id: pct for v, pct in shares.items() if v in by_version}
        rest = self._scaled({d.deployed_id: d.share for d in current if d.deployed_id not in fixed},
                            100 - sum(fixed.values()))
        split = {k: v for k, v in {**rest, **fixed}.items() if v}
        if split != {d.deployed_id: d.share for d in current if d.share}:
            self.client.update_endpoint(endpoint={"name": endpoint["name"], "traffic_split": split},
                                        update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]))
            log.info("Traffic of %s: %s", endpoint["name"],
                     {d.version: split.get(d.deployed_id, 0) for d in current})
        after = {d.version: d for d in self.deployments(self.ensure(model, role))}
        first = next(iter(shares), None)
        return after.get(first) if first else None

    def undeploy(self, model: str, role: str, version: str) -> bool:
        """Take ``version`` off the endpoint (its traffic goes to the others first); False when it was not there."""
        endpoint = self.get(model, role)
        found = {d.version: d for d in self.deployments(endpoint)} if endpoint else {}
        if version not in found:
            return False
        if found[version].share and len(found) > 1:
            self.route(model, role, {version: 0})
        self.client.undeploy_model(endpoint=endpoint["name"], deployed_model_id=found[version].deployed_id).result(
            timeout=OPERATION_TIMEOUT_S)
        log.info("Undeployed %s from %s", version, endpoint["name"])
        return True

    def serving_alone(self, model: str, version: str) -> str:
        """An endpoint that sends all its traffic to ``version`` (its staging endpoint, or the serving one)."""
        for ref in (self.registry.get_version(model_name=model, version_name=version) or {}).get("deployedModels", []):
            endpoint = as_dict(self.client.get_endpoint(name=ref["endpoint"]))
            if endpoint.get("trafficSplit", {}).get(ref["deployedModelId"]) == 100:
                return endpoint["name"]
        raise NotFound(f"No endpoint serves version {version} of {model} alone; deploy it to one first")

    @cached_property
    def probes(self):
        """The prediction client without retries: a canary probe that fails counts as failed."""
        from google.cloud.aiplatform_v1 import PredictionServiceClient

        # The provider's PredictionServiceHook.predict fails with proto-plus 1.29 (proto-plus-python#488):
        # its client, called in the flattened form
        host = f"{self.where.region}-aiplatform.googleapis.com"
        return PredictionServiceClient(credentials=self.hook.get_credentials(), client_options={"api_endpoint": host})

    @cached_property
    def predictions(self):
        """The prediction client with retries, for smoke tests and evaluations."""
        from include.vertex.retrying import retrying

        return retrying(self.probes)

    def predict(self, endpoint: str, instances: list, *, batch_size: int = 32) -> list:
        """Online predictions through ``endpoint``, ``batch_size`` instances per request, in order."""
        answers: list = []
        for start in range(0, len(instances), batch_size):
            chunk = instances[start:start + batch_size]
            response = self.predictions.predict(endpoint=endpoint, instances=chunk)
            got = json_format.MessageToDict(response._pb).get("predictions", [])
            if len(got) != len(chunk):
                raise ValueError(f"{len(got)} predictions for {len(chunk)} instances from {endpoint}")
            answers.extend(got)
        return answers

    def probe(self, model: str, role: str = SERVING):
        """``probe(instances) -> the version that answered``, one online request to ``<model>-<role>`` per call
        (for include.lifecycle.canary); any failure raises."""
        endpoint, answered = self.where.endpoint(model, role), {}

        def send(instances: list) -> str:
            response = self.probes.predict(endpoint=endpoint, instances=instances)
            version_id = response.model_version_id
            if version_id not in answered:
                found = self.registry.get_version(model_name=model, version_name=version_id)
                answered[version_id] = found["name"].rsplit("/", 1)[-1] if found else version_id
            return answered[version_id]

        return send

    @staticmethod
    def _scaled(shares: dict[str, int], total: int) -> dict[str, int]:
        """``shares`` rescaled to sum to ``total`` (largest remainders), or all 0 when there is nothing to share."""
        weight = sum(shares.values())
        if total <= 0 or not shares:
            return {key: 0 for key in shares}
        if weight == 0:
            shares, weight = {key: 1 for key in shares}, len(shares)
        exact = {key: value * total / weight for key, value in shares.items()}
        scaled = {key: int(value) for key, value in exact.items()}
        for key in sorted(exact, key=lambda k: exact[k] - scaled[k], reverse=True)[:total - sum(scaled.values())]:
            scaled[key] += 1
        return scaled
