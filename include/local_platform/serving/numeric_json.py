"""JSON whose bulk is one regular array of numbers, read without a Python object per number.

An `instances` image of 32x32x3 floats is ~26 kB of JSON: `orjson.loads` builds
3,072 Python floats and ~1,000 lists for it, and TensorFlow then walks them all
again, which is most of the CPU of a JSON prediction. Here simdjson reads that
array straight into a float64 buffer and orjson reads everything else, so every
answer, and every error, stays what `orjson.loads` would give:

- the array is the span from the document's first `[` to its last `]`, taken only
  when it holds nothing but numbers, commas, brackets and whitespace, sits outside
  any string, and is regular (its bracket skeleton is that of one shape);
- the rest of the document, with a number in the array's place, must parse with
  orjson, and that number must then occur exactly once;
- anything else (and any doubt) falls back to `orjson.loads` of the whole document.

The array comes back as a `NumericArray`: the values as float64 and the JSON text,
so a consumer that needs the plain value (an integer input, a ragged batch, an
error message) gets exactly what orjson would have built.
"""

from __future__ import annotations

import functools
import queue
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

#: Deepest array read this way; deeper ones go through orjson (and the runtime's own depth guard).
MAX_RANK = 32
#: Smallest span worth the detour: below it orjson is as fast.
MIN_ARRAY_BYTES = 256
_NUMBER_AND_SPACE = b"0123456789.eE+- \t\r\n"
_ARRAY_OPENS = tuple(bytes([c]) for c in b"[-0123456789")
_ARRAY_CLOSES = tuple(bytes([c]) for c in b"]0123456789")
# Stands in for the array while orjson reads the rest; any value would do, since it must occur exactly once.
_PLACEHOLDER = -1.2345678901234567e-300
_PLACEHOLDER_TEXT = b" -1.2345678901234567e-300 "
_parsers: queue.SimpleQueue = queue.SimpleQueue()  # simdjson parsers are not thread-safe: one per concurrent call


@dataclass(frozen=True)
class NumericArray:
    """A regular JSON array of numbers: `values` (float64, its shape) and the JSON text it came from."""

    values: np.ndarray
    raw: bytes

    def __len__(self) -> int:
        return len(self.values)

    def as_json(self) -> Any:
        """The nested lists `orjson.loads` gives for this array (ints stay ints)."""
        return orjson.loads(self.raw)


def loads(data: bytes) -> Any:
    """`orjson.loads(data)`, with its one large regular array of numbers (if any) as a `NumericArray`."""
    found = _split(data)
    if found is None:
        return orjson.loads(data)
    start, end, array = found
    try:
        rest = orjson.loads(data[:start] + _PLACEHOLDER_TEXT + data[end:])
    except orjson.JSONDecodeError:
        return orjson.loads(data)  # raises the error the whole document deserves
    replaced = _put_back(rest, NumericArray(array, data[start:end]))
    return orjson.loads(data) if replaced is None else replaced


def plain(value: Any) -> Any:
    """`value` as orjson would have read it (a `NumericArray` becomes nested lists)."""
    return value.as_json() if isinstance(value, NumericArray) else value


def _split(data: bytes) -> tuple[int, int, np.ndarray] | None:
    """(start, end, values) of the array to read natively, or None."""
    start, end = _bounds(data)
    if start < 0 or end - start < MIN_ARRAY_BYTES:
        return None
    prefix = data[:start]
    if b"\\" in prefix or prefix.count(b'"') % 2 or prefix.count(b"[") + prefix.count(b"{") > 256:
        return None  # possibly inside a string, or nested so deep that orjson's own limit may apply
    span = data[start:end]
    skeleton = span.translate(None, _NUMBER_AND_SPACE)
    rank = len(skeleton) - len(skeleton.lstrip(b"["))
    if rank > MAX_RANK:
        return None
    values = _read_numbers(span)
    if values is None:
        return None
    flat, shape = values
    # sizes first: a skeleton is only built when it is no longer than the text it is compared with
    if flat.size != _product(shape) or len(skeleton) != _skeleton_length(shape) or skeleton != _skeleton(shape):
        return None
    array = flat.reshape(shape)
    if array.size and not np.abs(array).max() < 2.0 ** 53:
        return None  # integers past float64's exact range convert differently elsewhere
    return start, end, array


def _bounds(data: bytes, tries: int = 8) -> tuple[int, int]:
    """The first `[` that opens numbers or another `[`, and the end of the last `]` that closes them.

    So `{"instances": [{"image": [[...]], "key": "k"}]}` yields the image array, not the instances list.
    """
    start = data.find(b"[")
    while start >= 0 and tries:
        if data[start + 1:start + 65].lstrip()[:1] in _ARRAY_OPENS:
            break
        start, tries = data.find(b"[", start + 1), tries - 1
    end = data.rfind(b"]")
    while end >= 0 and tries:
        if data[max(end - 64, 0):end].rstrip()[-1:] in _ARRAY_CLOSES:
            break
        end, tries = data.rfind(b"]", 0, end), tries - 1
    return (start, end + 1) if tries and start >= 0 and end > start else (-1, -1)


def _read_numbers(span: bytes) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """All numbers of a JSON array as float64 and the shape its first elements give; None if not numeric."""
    try:
        parser = _parsers.get_nowait()
    except queue.Empty:
        parser = simdjson.Parser()
    try:
        document = parser.parse(span)
        try:
            if not isinstance(document, simdjson.Array):
                return None
            flat = np.frombuffer(document.as_buffer(of_type="d"), dtype=np.float64).copy()
            shape, level = [], document
            while isinstance(level, simdjson.Array) and len(shape) <= MAX_RANK:
                shape.append(len(level))
                level = level[0] if len(level) else None
            return flat, tuple(shape)
        finally:
            del document  # the parser cannot be reused while a document it made is alive
    except (ValueError, TypeError, RuntimeError, IndexError):
        return None
    finally:
        _parsers.put(parser)


def _skeleton_length(shape: tuple[int, ...]) -> int:
    length = 0
    for size in reversed(shape):
        length = 2 + size * length + max(size - 1, 0)
    return length


@functools.lru_cache(maxsize=16)
def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a regular array of this shape, numbers and whitespace left out."""
    text = b""
    for size in reversed(shape):
        text = b"[" + b",".join([text] * size) + b"]"
    return text


def _product(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _put_back(rest: Any, array: NumericArray) -> Any | None:
    """`rest` with its one placeholder replaced by `array`; None if the placeholder is not there exactly once."""
    if _is_placeholder(rest):
        return array
    found: list[tuple[Any, Any]] = []
    stack = [rest]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if _is_placeholder(value):
                found.append((node, key))
            elif isinstance(value, dict | list):
                stack.append(value)
    if len(found) != 1:
        return None
    node, key = found[0]
    node[key] = array
    return rest


def _is_placeholder(value: Any) -> bool:
    return type(value) is float and value == _PLACEHOLDER


def dumps(value: Any) -> bytes:
    """JSON bytes; numpy arrays and scalars are written natively (float32 at float32 precision)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)

