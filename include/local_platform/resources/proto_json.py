"""Request bodies by Google's proto3 JSON mapping, checked against ml/v1's discovery document.

Google's API parses a body by the proto3 JSON rules: every field may be spelled
as in the proto (``deployment_uri``) or in lowerCamelCase (``deploymentUri``),
and answers carry lowerCamelCase. ``camel_case`` renames a body's fields (never
the keys of a map field such as ``labels``, which are data) so the rules of each
resource read one spelling, and the stored resource is answered as Google would.

``check_message`` validates a message against its schema in the discovery
document shipped with ``googleapiclient`` (the spec this service follows): known
fields only, the JSON type of each field, and bounded sizes, so nothing a client
sends can be stored that would later break a reader.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path

from include.local_platform.errors import field_error, invalid_argument

#: Fields whose value is a ``map<string, string>``: keys are the client's data.
MAP_FIELDS = frozenset({"labels"})
MAX_DEPTH = 16
MAX_STRING = 4096
MAX_ITEMS = 1000
_TYPE_NAMES = {"string": "TYPE_STRING", "boolean": "TYPE_BOOL", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
               "number": "TYPE_DOUBLE"}


def camel(name: str) -> str:
    """``deployment_uri`` -> ``deploymentUri`` (a lowerCamelCase name stays as it is)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    """``deploymentUri`` -> ``deployment_uri``: the proto name, as Google's error messages give fields."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def camel_case(value: object, where: str, depth: int = 0) -> object:
    """``value`` with every message field in lowerCamelCase; a field given in both spellings is refused.

    Below MAX_DEPTH nothing is renamed: no ml/v1 message nests that deep, so such a value is already wrong,
    and the check of its field refuses it with that field's own message.
    """
    if depth > MAX_DEPTH:
        return value
    if isinstance(value, list):
        return [camel_case(item, where, depth + 1) for item in value]
    if not isinstance(value, dict):
        return value
    renamed: dict = {}
    for key, item in value.items():
        name = camel(key)
        if name in renamed:
            raise invalid_argument(f'Invalid JSON payload received. Field "{snake(name)}" is set twice at '
                                   f"'{where}' (as {name} and {snake(name)}).")
        renamed[name] = item if name in MAP_FIELDS else camel_case(item, f"{where}.{snake(name)}", depth + 1)
    return renamed


@functools.cache
def _schemas() -> dict:
    spec = importlib.util.find_spec("googleapiclient")
    location = Path(next(iter(spec.submodule_search_locations)))
    document = json.loads((location / "discovery_cache" / "documents" / "ml.v1.json").read_text())
    return document["schemas"]


def check_message(value: object, schema: str, where: str, depth: int = 0) -> None:
    """Raise 400 naming the field unless ``value`` (already lowerCamelCase) fits ``schema`` of ml/v1."""
    if depth > MAX_DEPTH:
        raise field_error(where, f"nesting deeper than {MAX_DEPTH} levels.")
    if not isinstance(value, dict):
        raise _invalid_value(where, "type.googleapis.com/google.cloud.ml.v1." + schema.split("__")[-1], value)
    properties = _schemas()[schema].get("properties", {})
    for key, item in value.items():
        if key not in properties:
            raise invalid_argument(f'Invalid JSON payload received. Unknown name "{str(key)[:80]}" at '
                                   f"'{where}': Cannot find field.")
        _check_field(item, properties[key], f"{where}.{snake(key)}", depth)


def _check_field(value: object, prop: dict, where: str, depth: int) -> None:
    if "$ref" in prop:
        check_message(value, prop["$ref"], where, depth + 1)
    elif prop.get("type") == "array":
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            shown = f"got {len(value)} items" if isinstance(value, list) else f"got {type(value).__name__}"
            raise field_error(where, f"must be a list of at most {MAX_ITEMS} items ({shown}).")
        for item in value:
            _check_field(item, prop["items"], where, depth + 1)
    elif prop.get("type") == "object":  # map<string, string>
        if not isinstance(value, dict) or len(value) > MAX_ITEMS or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) + len(v) <= MAX_STRING for k, v in value.items()):
            raise field_error(where, "must be an object of string keys and values.")
    else:
        _check_scalar(value, prop, where)


def _check_scalar(value: object, prop: dict, where: str) -> None:
    kind = prop.get("format") if prop.get("format") in ("int64", "int32") else prop.get("type")
    if kind == "string":
        ok = isinstance(value, str) and len(value) <= MAX_STRING and "\x00" not in value
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind in ("int64", "int32"):  # int64 travels as a decimal string or a number, int32 as a number
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            kind == "int64" and isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value) is not None)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise _invalid_value(where, _TYPE_NAMES.get(kind, kind), value)


def _invalid_value(where: str, kind: str, value: object) -> Exception:
    shown = json.dumps(value)[:80] if isinstance(value, str | int | float | bool) or value is None \
        else type(value).__name__
    return field_error(where, f"Invalid value at '{where}' ({kind}), {shown}")
