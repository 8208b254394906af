"""Names on Vertex AI, derived from the run as on ml/v1, so a re-run finds what it made.

A model's id is its ml/v1 name in lowercase (Vertex AI model ids are ``[a-z0-9_-]``); each
version carries one alias that is its ml/v1 version id with ``-`` for ``_``
(``v20260101T000000_b64`` -> ``v20260101T000000-b64``: aliases are
``[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]``), so the lifecycle names versions the same way on both
platforms. Endpoints have fixed ids per model: ``<model>-serving`` takes the traffic,
``<model>-staging-<variant>`` holds a candidate while it is smoke-tested and evaluated.
"""

from __future__ import annotations

import re

DEFAULT_ALIAS = "default"
_OURS = re.compile(r"^v\d{8}T\d{6}-[a-z0-9]+$")


def model_id(model: str) -> str:
    """The Vertex AI model id of an ml/v1 model name."""
    return model.lower()


def alias(version: str) -> str:
    """The alias of an ml/v1 version id: ``_`` -> ``-``."""
    return version.replace("_", "-")


def version_of(aliases: list[str], version_id: str) -> str:
    """The lifecycle's name of a Vertex AI version: from its run alias, else its numeric id."""
    ours = [a for a in aliases if _OURS.match(a)]
    return ours[0].replace("-", "_") if ours else version_id


def endpoint_id(model: str, role: str) -> str:
    """``<model>-serving`` or ``<model>-staging-<variant>``: lowercase letters, digits and ``-``."""
    return re.sub(r"[^a-z0-9-]", "-", f"{model.lower()}-{role}")[:63].rstrip("-")


class Location:
    """The project and region every resource of the DAGs lives in."""

    def __init__(self, project: str, region: str):
        self.project, self.region = project, region

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    def model(self, model: str) -> str:
        return f"{self.parent}/models/{model_id(model)}"

    def version(self, model: str, version: str) -> str:
        """``.../models/M@<alias>``: one version, by its run alias (or its numeric id)."""
        return f"{self.model(model)}@{version if version.isdigit() else alias(version)}"

    def endpoint(self, model: str, role: str) -> str:
        return f"{self.parent}/endpoints/{endpoint_id(model, role)}"
