"""Serving graphs: one tf.Module per variant, each with a `serving_default` signature.

The variants are the ways ml/v1 users sent images to a model; every one takes
a pass-through `key` (or parses it from the tf.Example) and returns it beside
the heatmap so batch outputs join back to their inputs. All byte-based variants
decode with `features.decode_jpeg`, the op path training uses.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from . import features
from .variants import B64, INSTANCES, TFEXAMPLE, URL, VARIANTS

# Signature input names per variant, as the instance files spell them.
INPUT_NAMES = {
    INSTANCES: ("image", "key"),
    B64: ("image_bytes", "key"),
    URL: ("image_url", "key"),
    TFEXAMPLE: ("examples",),
}
OUTPUT_NAMES = ("heatmap", "key")

_STRINGS = tf.TensorSpec([None], tf.string)


def image_size_of(model: keras.Model) -> int:
    """The side of the model's square input: every variant resizes or checks images to it."""
    _, height, width, _ = model.input_shape
    if height != width or height is None:
        raise ValueError(f"expected a square fixed-size model input, got {model.input_shape}")
    return int(height)


class HeatmapServer(tf.Module):
    """Holds the Keras model (so its variables are saved) and the variant's serving function."""

    def __init__(self, model: keras.Model, variant: str) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        super().__init__(name=f"heatmap_{variant}")
        self.model = model
        self.variant = variant
        self.image_size = image_size_of(model)
        self.serve = _SERVE_BUILDERS[variant](self)

    def heatmap(self, images: tf.Tensor) -> tf.Tensor:
        """The model's heatmaps as float32, in inference mode: what every variant returns."""
        return tf.cast(self.model(images, training=False), tf.float32)

    def save(self, export_dir: str) -> str:
        """Write saved_model.pb + variables/ to a local directory."""
        tf.saved_model.save(self, export_dir, signatures={"serving_default": self.serve})
        return export_dir


def _instances(server: HeatmapServer) -> Callable:
    size = server.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, features.CHANNELS], tf.float32),
                                  _STRINGS])
    def serve(image: tf.Tensor, key: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"heatmap": server.heatmap(image), "key": tf.identity(key)}

    return serve


def _b64(server: HeatmapServer) -> Callable:
    size = server.image_size

    @tf.function(input_signature=[_STRINGS, _STRINGS])
    def serve(image_bytes: tf.Tensor, key: tf.Tensor) -> dict[str, tf.Tensor]:
        images = features.decode_jpeg_batch(image_bytes, size)
        return {"heatmap": server.heatmap(images), "key": tf.identity(key)}

    return serve


def _url(server: HeatmapServer) -> Callable:
    size = server.image_size

    @tf.function(input_signature=[_STRINGS, _STRINGS])
    def serve(image_url: tf.Tensor, key: tf.Tensor) -> dict[str, tf.Tensor]:
        # The service stages gs:// objects to local paths; TF's gs:// can't reach the emulator.
        image_bytes = tf.map_fn(tf.io.read_file, image_url, fn_output_signature=tf.string)
        images = features.decode_jpeg_batch(image_bytes, size)
        return {"heatmap": server.heatmap(images), "key": tf.identity(key)}

    return serve


def _tfexample(server: HeatmapServer) -> Callable:
    size = server.image_size

    @tf.function(input_signature=[_STRINGS])
    def serve(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, features.serving_feature_spec())
        images = features.decode_jpeg_batch(parsed[features.IMAGE_FEATURE], size)
        return {"heatmap": server.heatmap(images), "key": parsed[features.KEY_FEATURE]}

    return serve


_SERVE_BUILDERS: dict[str, Callable[[HeatmapServer], Callable]] = {
    INSTANCES: _instances,
    B64: _b64,
    URL: _url,
    TFEXAMPLE: _tfexample,
}
