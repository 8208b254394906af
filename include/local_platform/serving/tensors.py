"""JSON instances -> input tensors, by ml/v1's rules (the CPU-bound Python half of a prediction).

With a single input an instance is the value itself (or an object keyed by that
input's alias); with several inputs it is an object keyed by alias. Any
``{"b64": "..."}`` value is decoded to bytes. String inputs whose alias ends in
``_url`` and whose values are gs:// URLs are staged to local files first (see
gcs.stage), because TensorFlow's gs:// filesystem cannot reach an emulator.
"""

from __future__ import annotations

import base64
import binascii
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from include.local_platform import gcs
from include.local_platform.errors import PredictionError
from include.local_platform.serving.numeric_json import NumericArray, plain
from include.local_platform.serving.saved_model import InputFacts, Signature

#: Deepest nesting handed to TensorFlow's list converter when the input's rank is unknown (it aborts past 254).
MAX_CONVERTER_RANK = 32


def _decode_b64(value: Any) -> Any:
    """Replace every ``{"b64": "..."}`` by its bytes, recursively."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, TypeError, ValueError) as error:
                raise PredictionError(f"Invalid base64 value: {error}") from None
        raise PredictionError(f"Unexpected object {sorted(value)[:5]} where a value was expected.")
    if isinstance(value, list):
        return [_decode_b64(item) for item in value]
    return value


def _columns(instances: list, inputs: dict[str, Any]) -> dict[str, list]:
    """Instances (rows) -> one list of values per input alias (columns).

    A single-input model's instances read as one `NumericArray` stay one: that column whole.
    """
    if isinstance(instances, NumericArray) and len(inputs) == 1 and len(instances):
        return {next(iter(inputs)): instances}
    instances = plain(instances)
    if not isinstance(instances, list) or not instances:
        raise PredictionError("'instances' must be a non-empty list.")
    aliases = list(inputs)
    columns: dict[str, list] = {alias: [] for alias in aliases}
    for index, instance in enumerate(instances):
        if len(aliases) == 1:
            alias = aliases[0]
            if isinstance(instance, dict) and set(instance) == {alias}:
                instance = instance[alias]
            columns[alias].append(instance)
            continue
        if not isinstance(instance, dict):
            raise PredictionError(f"Instance {index} must be an object keyed by the model's inputs "
                                  f"{aliases}, got {type(plain(instance)).__name__}.")
        missing = [alias for alias in aliases if alias not in instance]
        unknown = [key for key in instance if key not in inputs]
        if missing or unknown:
            raise PredictionError(f"Instance {index} does not match the model's inputs {aliases}: "
                                  f"missing {missing}, unexpected {unknown}.")
        for alias in aliases:
            columns[alias].append(instance[alias])
    return columns


def _nesting_depth(values: list) -> int:
    """How deep the first elements nest: the rank TensorFlow's converter will infer."""
    depth, first = 0, values
    while isinstance(first, list) and depth <= MAX_CONVERTER_RANK:
        depth, first = depth + 1, first[0] if first else None
    return depth


def _float_tensor(values: list, facts: InputFacts) -> Any:
    """Nested lists of numbers -> a float tensor in TensorFlow's C++ converter, or None.

    About 5x faster than ``np.asarray`` on nested lists (it skips numpy's per-item
    Python protocol), which is most of the cost of a JSON ``instances`` request.
    Only for float dtypes, where both agree on every value they accept; anything
    TensorFlow refuses (None, numeric strings, ragged lists) goes the numpy way,
    so results and error messages stay what they were. So does a value nested
    deeper than the input's rank: the converter aborts the whole process (a failed
    CHECK, "Too many dimensions in tensor") past 254 levels.
    """
    if _nesting_depth(values) > (facts.rank if facts.rank is not None else MAX_CONVERTER_RANK):
        return None
    try:
        return eager_tensor(values, facts.dtype)
    except (ValueError, TypeError):
        return None


#: Float dtypes a float64 array casts to exactly as TensorFlow's converter casts Python numbers.
_NATIVE_FLOATS = ("float32", "float64")


def _stacked(values: list, facts: InputFacts) -> np.ndarray | None:
    """A float32/float64 column whose values all came as same-shaped `NumericArray`s, as one array.

    Equal to what the list path builds: JSON numbers read as float64 then cast, as
    TensorFlow's converter casts Python floats (and ints below 2**53).
    """
    if facts.name not in _NATIVE_FLOATS or not all(isinstance(v, NumericArray) for v in values):
        return None
    shape = values[0].values.shape
    if any(value.values.shape != shape for value in values):
        return None
    return np.stack([value.values for value in values]).astype(facts.numpy_dtype, copy=False)


def _tensor(alias: str, values: list, facts: InputFacts) -> Any:
    """One input column as an array (or eager tensor) of the input's dtype and a compatible shape."""
    if isinstance(values, NumericArray):  # a whole column read as one array
        if facts.name not in _NATIVE_FLOATS:
            return _tensor(alias, values.as_json(), facts)
        array = values.values.astype(facts.numpy_dtype, copy=False)
    elif (array := _stacked(values, facts)) is not None:
        pass
    elif any(isinstance(value, NumericArray) for value in values):
        return _tensor(alias, [plain(value) for value in values], facts)
    elif facts.name == "string":
        array = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            value = _decode_b64(value)
            if isinstance(value, str):
                value = value.encode("utf-8")
            elif not isinstance(value, bytes):
                raise PredictionError(f"Input '{alias}' expects strings or {{\"b64\": ...}}, "
                                      f"got {type(value).__name__}.")
            array[i] = value
        if facts.rank not in (None, 1):
            raise PredictionError(f"Input '{alias}' of rank {facts.rank} is not supported.")
    elif facts.floating and (array := _float_tensor(values, facts)) is not None:
        pass
    else:
        try:
            array = np.asarray(values, dtype=facts.numpy_dtype)
        except (ValueError, TypeError, OverflowError) as error:  # OverflowError: an int out of the dtype's range
            raise PredictionError(f"Input '{alias}' cannot be read as {facts.name} "
                                  f"(ragged or non-numeric values): {error}") from None
    if not facts.accepts(tuple(array.shape)):
        raise PredictionError(f"Input '{alias}' has shape {list(array.shape)[1:]} per batch of "
                              f"{array.shape[0] if array.ndim else 0}, the model expects "
                              f"{list(facts.dims)[1:]}.")
    return array


def _stage_urls(alias: str, values: list, staging_dir: Path) -> list:
    """gs:// URLs -> local copies. Nothing else is read: a local path or another scheme is that
    instance's error, worded the same whether or not such a file exists."""
    staged, budget = [], gcs.StagingBudget(gcs.MAX_STAGED_BYTES_PER_REQUEST)
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value.startswith("gs://"):
            raise PredictionError(f"Input '{alias}': only gs:// URLs are read; instance {index} is not one.")
        try:
            staged.append(gcs.stage(value, staging_dir, index, budget))
        except gcs.GcsError as error:
            raise PredictionError(f"Input '{alias}': {error}") from None
    return staged


@functools.cache
def _eager_constructor() -> Callable[[Any, Any], Any]:
    """``EagerTensor(value, device, dtype)`` as ``tf.constant`` ends up calling it, or ``tf.constant``.

    Outside any ``tf.device`` scope ``tf.constant`` names the device as ``""``, and TensorFlow
    then copies the new tensor to that (default) device: ~20 us of a ~25 us conversion,
    measured. Passing no device makes the same tensor in host memory, where the function
    call takes it from anyway. Where this TensorFlow build lacks the internals,
    ``tf.constant`` is used as it is.
    """
    import tensorflow as tf

    try:
        from tensorflow.python.eager import context
        from tensorflow.python.framework.ops import EagerTensor

        eager = context.context()
        eager.ensure_initialized()
        return lambda value, dtype: EagerTensor(value, eager.device_name or None, dtype.as_datatype_enum)
    except (ImportError, AttributeError):
        return lambda value, dtype: tf.constant(value, dtype=dtype)


def eager_tensor(value: Any, dtype: Any) -> Any:
    """``tf.constant(value, dtype=dtype)``, cheaper (see ``_eager_constructor``). The tensor may share
    a numpy array's memory: the caller hands the array over and never changes it."""
    return _eager_constructor()(value, dtype)


@dataclass
class PreparedBatch:
    """Input tensors ready for the signature, and the staged files they may point at."""

    feeds: dict[str, Any]
    count: int
    staging: tempfile.TemporaryDirectory | None = None

    def cleanup(self) -> None:
        if self.staging is not None:
            self.staging.cleanup()
            self.staging = None


def prepare(signature: Signature, instances: list, staging_dir: Path | None = None) -> PreparedBatch:
    """JSON instances -> input tensors (the CPU-bound Python half of a prediction).

    Kept apart from ``run`` so batch jobs can prepare the next batch while
    TensorFlow (which releases the GIL) computes the current one.
    """
    import tensorflow as tf

    columns = _columns(instances, signature.inputs)
    batch = PreparedBatch(feeds={}, count=len(instances))
    try:
        for alias, values in columns.items():
            facts = signature.facts[alias]
            if facts.stages_files:
                if batch.staging is None:
                    batch.staging = tempfile.TemporaryDirectory(dir=staging_dir)
                values = _stage_urls(alias, plain(values), Path(batch.staging.name))
            array = _tensor(alias, values, facts)
            batch.feeds[alias] = array if isinstance(array, tf.Tensor) else eager_tensor(array, facts.dtype)
    except RecursionError:  # a deeply nested value: the instance's fault, not the service's
        batch.cleanup()
        raise PredictionError("An instance is nested too deeply to be read as a tensor.") from None
    except BaseException:
        batch.cleanup()
        raise
    return batch
