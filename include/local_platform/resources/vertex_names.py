"""Vertex AI resource names: ``projects/P/locations/L/<collection>/<id>``, model versions ``models/M@V``.

Ids the service makes are 19-digit numbers, as Vertex AI's are (the SDK's name checks want
two or more characters of ``[\\w-]``). A name with ``@`` names a model version by id or by
alias. Names are checked before they become store keys, and ids never contain ``/``.
"""

from __future__ import annotations

import re
import secrets

from include.local_platform.errors import invalid_argument
from include.local_platform.resources import validation

COLLECTIONS = ("models", "endpoints", "batchPredictionJobs", "customJobs", "trainingPipelines", "operations")
ID_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ALIAS_RULE = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]$")  # Model.version_aliases, as the proto documents it
_NAME = re.compile(r"^projects/(?P<project>[A-Za-z0-9.:-]{1,64})/locations/(?P<location>[a-z0-9-]{1,64})"
                   r"(?:/(?P<collection>[A-Za-z]+)/(?P<id>[A-Za-z0-9_-]{1,128})(?:@(?P<version>[A-Za-z0-9_-]{1,128}))?)?$")


_FILTER = re.compile(r'^\s*(display_name|displayName|labels\.[a-z0-9_-]+)\s*=\s*"?([^"]*)"?\s*$')


def matcher(filter_text: str | None):
    """A test for list filters ``display_name="x"`` and ``labels.k="v"`` joined by AND (what the DAGs use)."""
    if not filter_text:
        return lambda resource: True
    clauses = validation.filter_clauses(filter_text, _FILTER, 'Unsupported filter "{clause:.200}": use '
                                        'display_name="..." or labels.KEY="..." joined by AND.')

    def test(resource: dict) -> bool:
        for field, value in clauses:
            actual = (resource.get("labels") or {}).get(field[7:]) if field.startswith("labels.") \
                else resource.get("displayName")
            if actual != value:
                return False
        return True

    return test


def new_id() -> str:
    """A fresh numeric id of 19 digits (never starting with 0)."""
    return str(secrets.randbelow(9 * 10**18) + 10**18)


def parent(value: str) -> str:
    """``projects/P/locations/L``, checked."""
    match = _NAME.match(value or "")
    if not match or match["collection"]:
        raise invalid_argument(f"Invalid parent resource name '{str(value)[:200]}': expected "
                               "projects/{project}/locations/{location}.")
    return value


def split(value: str, collection: str) -> tuple[str, str, str | None]:
    """``projects/P/locations/L/<collection>/ID[@V]`` -> (parent, id, version or alias or None)."""
    match = _NAME.match(value or "")
    if not match or match["collection"] != collection or (match["version"] and collection != "models"):
        raise invalid_argument(f"Invalid resource name '{str(value)[:200]}': expected "
                               f"projects/{{project}}/locations/{{location}}/{collection}/{{id}}.")
    return f"projects/{match['project']}/locations/{match['location']}", match["id"], match["version"]


def resource(parent_name: str, collection: str, resource_id: str) -> str:
    return f"{parent_name}/{collection}/{resource_id}"


def check_id(value: str, what: str) -> str:
    if not ID_RULE.match(value or ""):
        raise invalid_argument(f"Invalid {what} '{str(value)[:200]}': use letters, digits, '-' and '_' "
                               "(at most 128, starting with a letter or digit).")
    return value
