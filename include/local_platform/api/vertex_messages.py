"""Vertex AI messages <-> the store's JSON documents, by the proto3 JSON mapping.

Resources are stored as the JSON Google's REST surface would show (lowerCamelCase,
defaults omitted, timestamps as RFC 3339 strings), so a stored document turns into
the response message with ``to_message`` and a request message into a document with
``to_doc``. Keys starting with ``_`` are the service's own and never reach a client.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from include.local_platform.state.store import public


def pb(proto_plus_type: Any) -> type[Message]:
    """The protobuf class behind a google-cloud-aiplatform (proto-plus) type."""
    return proto_plus_type.pb()


def to_doc(message: Message) -> dict:
    """A message as proto3 JSON (lowerCamelCase, defaults omitted)."""
    return json_format.MessageToDict(message)


def to_message(doc: dict, message_type: type[Message]) -> Message:
    """A stored document (its public fields) as a message; fields the message lacks are ignored."""
    return json_format.ParseDict(public(doc), message_type(), ignore_unknown_fields=True)


def fill(doc: dict, message: Message) -> Message:
    """Parse a stored document (its public fields) into an existing message, e.g. a repeated field's new item."""
    return json_format.ParseDict(public(doc), message, ignore_unknown_fields=True)


def values(items: list) -> list[struct_pb2.Value]:
    """Python JSON values (prediction rows, instances) as google.protobuf.Value messages."""
    listed = struct_pb2.ListValue()
    json_format.ParseDict(items, listed)
    return list(listed.values)


def python(value: struct_pb2.Value) -> Any:
    """A google.protobuf.Value as the Python JSON value it holds."""
    return json_format.MessageToDict(value)
