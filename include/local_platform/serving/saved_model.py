"""A SavedModel ready to serve: loaded with the ``serve`` tag, its signatures and their inputs read once.

What hosted ml/v1 checked when a version was created is checked here too: the
directory holds ``saved_model.pb`` (or ``.pbtxt``) and at least one signature,
else ``BadModel`` (the version ends FAILED with that message).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from include.local_platform.errors import PredictionError

log = logging.getLogger(__name__)
DEFAULT_SIGNATURE = "serving_default"


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
    batcher: Any = field(default=None, init=False, repr=False, compare=False)  # serving.batching's queue
    fixed_shapes: bool = field(default=False, init=False)  # every input's shape past the batch axis is fixed

    def __post_init__(self) -> None:
        self.flat_order = _flat_order(self.function, self.inputs)
        self.facts = {alias: InputFacts.of(alias, spec) for alias, spec in self.inputs.items()}
        self.fixed_shapes = all(facts.dims is not None and None not in facts.dims[1:]
                                for facts in self.facts.values())

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


def warm() -> None:
    """Import TensorFlow (about 14 s of CPU) ahead of the first deployment; run in a background thread."""
    started = time.monotonic()
    import tensorflow  # noqa: F401

    log.info("TensorFlow ready in %.1f s", time.monotonic() - started)
