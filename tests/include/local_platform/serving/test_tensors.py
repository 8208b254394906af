"""The runtime's cheap input path gives what TensorFlow's own calls give: shapes accepted, tensors built."""

from __future__ import annotations

import numpy as np
import pytest

from include.local_platform.serving.saved_model import InputFacts
from include.local_platform.serving.tensors import eager_tensor

SPEC_SHAPES = [None, [], [None], [None, 3], [2, 3], [None, None, 3], [None, 32, 32, 3]]
ARRAY_SHAPES = [(), (1,), (2,), (4, 3), (2, 3), (2, 4), (1, 32, 32, 3), (1, 32, 31, 3), (5, 7, 3)]


@pytest.mark.parametrize("spec_shape", SPEC_SHAPES, ids=str)
def test_accepts_is_tensorflows_shape_compatibility(spec_shape):
    import tensorflow as tf

    spec = tf.TensorSpec(shape=spec_shape, dtype=tf.float32, name="x")
    facts = InputFacts.of("x", spec)
    for shape in ARRAY_SHAPES:
        assert facts.accepts(shape) == spec.shape.is_compatible_with(shape), (spec_shape, shape)


def test_facts_read_once_from_the_spec():
    import tensorflow as tf

    url = InputFacts.of("image_url", tf.TensorSpec([None], tf.string))
    assert (url.name, url.rank, url.dims, url.stages_files, url.floating) == ("string", 1, (None,), True, False)
    image = InputFacts.of("image", tf.TensorSpec([None, 8, 8, 3], tf.float32))
    assert (image.name, image.numpy_dtype, image.stages_files, image.floating) == ("float32", np.float32, False, True)
    assert InputFacts.of("image_url", tf.TensorSpec([None], tf.float32)).stages_files is False  # not a string


@pytest.mark.parametrize("value, dtype", [
    (np.arange(24, dtype=np.float32).reshape(2, 4, 3), "float32"),
    (np.array([1.5, -2.25]), "float64"),
    (np.array([b"\xff\xd8jpeg", b"key"], dtype=object), "string"),
    ([[0.1, 0.2], [0.3, 0.4]], "float32"),
    ([[1, 2], [3, 4]], "float64"),
    ([1, 2, 3], "int64"),
], ids=["f32 array", "f64 array", "bytes", "nested floats", "ints as float", "int64 list"])
def test_eager_tensor_equals_tf_constant(value, dtype):
    import tensorflow as tf

    expected = tf.constant(value, dtype=dtype)
    got = eager_tensor(value, tf.as_dtype(dtype))
    assert isinstance(got, tf.Tensor) and got.dtype == expected.dtype and got.shape == expected.shape
    assert got.device == expected.device
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


@pytest.mark.parametrize("value", [[[1.0, 2.0], [3.0]], [None, 1.0], ["1.5"]], ids=["ragged", "null", "string"])
def test_eager_tensor_refuses_what_tf_constant_refuses(value):
    import tensorflow as tf

    with pytest.raises((ValueError, TypeError)):
        tf.constant(value, dtype=tf.float32)
    with pytest.raises((ValueError, TypeError)):
        eager_tensor(value, tf.float32)
