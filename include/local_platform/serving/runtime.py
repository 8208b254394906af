"""The TensorFlow runtime: load SavedModels once, turn JSON instances into predictions.

Instances follow ml/v1's rules: with a single input an instance is the value
itself (or an object keyed by that input's alias); with several inputs it is
an object keyed by alias. Any ``{"b64": "..."}`` value is decoded to bytes.
String inputs whose alias ends in ``_url`` and whose values are gs:// URLs are
staged to local files first (see gcs.stage), because TensorFlow's gs://
filesystem cannot reach an emulator.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gc
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from include.local_platform import gcs
from include.local_platform.errors import PredictionError
from include.local_platform.serving.numeric_json import NumericArray, plain

log = logging.getLogger(__name__)
DEFAULT_SIGNATURE = "serving_default"
#: Deepest nesting handed to TensorFlow's list converter when the input's rank is unknown (it aborts past 254).
MAX_CONVERTER_RANK = 32


class BadModel(Exception):
    """A SavedModel that cannot serve: missing files, no ``serve`` tag, no signature."""


@dataclass(frozen=True)
class InputFacts:
    """What ``prepare`` needs of one input's ``tf.TensorSpec``, read once when the model loads.

    A TensorSpec's ``dtype.name``, ``shape.rank`` or ``is_compatible_with`` build Python
    objects on every access; on the online path they were a fifth of the service's own time.
    """

    dtype: Any  # tf.DType
    name: str  # the dtype's name: float32, string...
    numpy_dtype: Any
    floating: bool
    rank: int | None
    dims: tuple[int | None, ...] | None  # None: any shape
    stages_files: bool  # a string input whose alias ends in ``_url`` (gs:// URLs the model reads)

    @classmethod
    def of(cls, alias: str, spec: Any) -> InputFacts:
        rank = spec.shape.rank
        return cls(dtype=spec.dtype, name=spec.dtype.name, numpy_dtype=spec.dtype.as_numpy_dtype,
                   floating=spec.dtype.is_floating, rank=rank,
                   dims=None if rank is None else tuple(spec.shape.as_list()),
                   stages_files=spec.dtype.name == "string" and alias.endswith("_url"))

    def accepts(self, shape: tuple) -> bool:
        """``spec.shape.is_compatible_with(shape)``."""
        if self.dims is None:
            return True
        return len(shape) == len(self.dims) and all(
            want is None or want == got for want, got in zip(self.dims, shape, strict=True))


@dataclass
class Signature:
    """One serving signature: its concrete function and its input specs by alias."""

    function: Any
    inputs: dict[str, Any]  # alias -> tf.TensorSpec
    flat_order: list[str] | None = field(default=None, init=False)
    facts: dict[str, InputFacts] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.flat_order = _flat_order(self.function, self.inputs)
        self.facts = {alias: InputFacts.of(alias, spec) for alias, spec in self.inputs.items()}

    def call(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """The concrete function on tensors already checked against the specs (see ``_flat_order``)."""
        if self.flat_order is None:
            return self.function(**feeds)
        return self.function._call_flat([feeds[alias] for alias in self.flat_order],
                                        self.function.captured_inputs)

    @property
    def stages_files(self) -> bool:
        """Whether calls read gs:// objects first (string inputs whose alias ends in ``_url``)."""
        return any(facts.stages_files for facts in self.facts.values())

    def __call__(self, instances: list, staging_dir: Path | None = None) -> list[dict]:
        return predict(self, instances, staging_dir)


def _flat_order(function: Any, inputs: dict[str, Any]) -> list[str] | None:
    """Aliases in the order of the graph's input placeholders, when they can be told apart.

    Calling ``_call_flat`` skips the structured-signature layer (argument binding,
    nest flattening, spec checks: about a tenth of a one-instance prediction).
    ``prepare`` has already checked dtype and shape against the specs. Where the
    placeholders do not map one to one onto the aliases (or the TensorFlow
    version lacks the method) the ordinary call is used.
    """
    try:
        names = [tensor.name.split(":")[0] for tensor in function.inputs[: len(inputs)]]
        by_name = {spec.name: alias for alias, spec in inputs.items()}
        if not callable(getattr(function, "_call_flat", None)) or sorted(names) != sorted(by_name) \
                or len(function.inputs) != len(inputs) + len(function.captured_inputs):
            return None
        return [by_name[name] for name in names]
    except (AttributeError, TypeError):
        return None


class LoadedModel:
    """A SavedModel loaded with the ``serve`` tag, its signatures ready to call."""

    def __init__(self, path: Path):
        import tensorflow as tf

        if not tf.saved_model.contains_saved_model(str(path)):
            raise BadModel(f"{path.name} is expected to contain exactly one of: "
                           "[saved_model.pb, saved_model.pbtxt]")
        try:
            self._model = tf.saved_model.load(str(path), tags=["serve"])
        except (RuntimeError, ValueError, OSError, tf.errors.OpError) as error:
            raise BadModel(f"cannot load the SavedModel with tag 'serve': {error}") from error
        self.signatures: dict[str, Signature] = {}
        for name, function in self._model.signatures.items():
            _, kwargs = function.structured_input_signature
            self.signatures[name] = Signature(function=function, inputs=dict(kwargs))
        if not self.signatures:
            raise BadModel("the SavedModel has no serving signature")

    def signature(self, name: str | None) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise PredictionError(f"The model has no signature '{name}'; "
                                  f"it has {sorted(self.signatures)}.")
        return self.signatures[name]


class ModelCache:
    """Loaded models by version name; each is loaded once, however many requests arrive."""

    def __init__(self):
        self._models: dict[str, LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def peek(self, key: str) -> LoadedModel | None:
        """The model if it is loaded already (never loads: safe on the event loop)."""
        return self._models.get(key)

    def get(self, key: str, path: Path) -> LoadedModel:
        model = self._models.get(key)
        if model is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._models:
                log.info("loading SavedModel %s from %s", key, path)
                self._models[key] = LoadedModel(path)
                # A loaded model is a large, long-lived object graph: move it out of the
                # collector's view so parsing JSON (many short-lived lists) stays fast.
                gc.freeze()
            return self._models[key]

    def evict(self, key: str) -> None:
        """Forget a model and give its memory back (frozen objects are never collected otherwise)."""
        if self._models.pop(key, None) is not None:
            gc.unfreeze()
            gc.collect()
            gc.freeze()


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


def dumps(value: Any) -> bytes:
    """JSON bytes; numpy arrays and scalars are written natively (float32 at float32 precision)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return value


_TRACE_NOISE = ("Graph execution error", "Detected at node", "File ", "[[", "defined at", "Traceback")


def _tf_message(error: Exception) -> str:
    """The line of a TensorFlow error that says what went wrong, without the graph stack."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines()]
    useful = [line for line in lines if line and not any(noise in line for noise in _TRACE_NOISE)
              and not line.startswith(("|", "^", "\\"))]
    return (useful[-1] if useful else lines[0])[:500]


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


def run(signature: Signature, batch: PreparedBatch) -> list[dict]:
    """Call the signature on a prepared batch; one row per instance, keyed by output alias.

    Rows hold numpy values for numeric outputs: serialise them with ``dumps``.
    """
    import tensorflow as tf

    try:
        outputs = signature.call(batch.feeds)
    except (tf.errors.OpError, ValueError, TypeError) as error:
        raise PredictionError(f"Prediction failed: {_tf_message(error)}") from None
    finally:
        batch.cleanup()
    rows: list[dict] = [{} for _ in range(batch.count)]
    for alias, tensor in outputs.items():
        array = tensor.numpy()
        if array.ndim == 0 or array.shape[0] != batch.count:
            raise PredictionError(f"Output '{alias}' is not batched (shape {list(array.shape)}).")
        # numeric rows stay numpy (serialised by `dumps`); strings become text or {"b64": ...}
        values = [_json_value(value) for value in array.tolist()] if array.dtype == object else array
        for row, value in zip(rows, values, strict=True):
            row[alias] = value
    return rows


def predict(signature: Signature, instances: list, staging_dir: Path | None = None) -> list[dict]:
    """Run one batch of instances; raise PredictionError for anything the instances got wrong."""
    return run(signature, prepare(signature, instances, staging_dir))
