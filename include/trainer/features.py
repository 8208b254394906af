"""The wire format shared by data, training, serving and instance files.

One JPEG encode and one JPEG decode op path live here, so training
preprocessing and every byte-based serving variant see identical pixels.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

DEFAULT_IMAGE_SIZE = 32
CHANNELS = 3
IMAGE_FEATURE = "image/encoded"
HEATMAP_FEATURE = "heatmap"
KEY_FEATURE = "key"
JPEG_QUALITY = 95
# INTEGER_ACCURATE is the libjpeg default and does not depend on CPU features.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def encode_jpeg(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> JPEG bytes (the only encoder the project uses)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"encode_jpeg wants uint8 pixels, got {image.dtype}")
    return tf.io.encode_jpeg(image, quality=JPEG_QUALITY, chroma_downsampling=False).numpy()


def decode_jpeg(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG bytes (scalar string) -> float32 [S, S, 3] in [0, 1]; resized only if the size differs."""
    image = tf.io.decode_jpeg(image_bytes, channels=CHANNELS, dct_method=JPEG_DCT_METHOD)
    image = tf.cast(image, tf.float32) / 255.0
    shape = tf.shape(image)
    same_size = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))
    image = tf.cond(
        same_size,
        lambda: image,
        lambda: tf.image.resize(image, [image_size, image_size], antialias=True),
    )
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [image_size, image_size, CHANNELS])


def decode_jpeg_batch(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG bytes [N] -> float32 [N, S, S, 3]: the batched form serving graphs use."""
    return tf.map_fn(
        lambda one: decode_jpeg(one, image_size),
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, CHANNELS], tf.float32),
    )


def decode_jpeg_numpy(jpegs: list[bytes], image_size: int) -> np.ndarray:
    """Eager helper: JPEG bytes -> float32 [N, S, S, 3], exactly the pixels the graphs see."""
    if not jpegs:
        return np.zeros([0, image_size, image_size, CHANNELS], np.float32)
    return decode_jpeg_batch(tf.constant(list(jpegs)), image_size).numpy()


def make_example(jpeg: bytes, key: str | bytes, heatmap: np.ndarray | None = None) -> bytes:
    """A serialized tf.Example; the heatmap is left out for serving-only examples."""
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    feature = {
        IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        KEY_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[key_bytes])),
    }
    if heatmap is not None:
        values = np.asarray(heatmap, np.float32).reshape(-1)
        feature[HEATMAP_FEATURE] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def serving_feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    """What the tfexample serving variant parses: the image and the pass-through key."""
    return {
        IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string),
        KEY_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def training_feature_spec(image_size: int) -> dict[str, tf.io.FixedLenFeature]:
    """What training parses: serving features plus the [S*S] heatmap target."""
    return {
        **serving_feature_spec(),
        HEATMAP_FEATURE: tf.io.FixedLenFeature([image_size * image_size], tf.float32),
    }


def parse_training_example(serialized: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Serialized example -> (image [S, S, 3], heatmap [S, S]) for tf.data."""
    parsed = tf.io.parse_single_example(serialized, training_feature_spec(image_size))
    image = decode_jpeg(parsed[IMAGE_FEATURE], image_size)
    heatmap = tf.reshape(parsed[HEATMAP_FEATURE], [image_size, image_size])
    return image, heatmap


def heatmap_size_of(serialized: bytes) -> int:
    """Side length of the heatmap in one example: how user data tells us its image size."""
    example = tf.train.Example.FromString(serialized)
    length = len(example.features.feature[HEATMAP_FEATURE].float_list.value)
    side = math.isqrt(length)
    if side * side != length or side == 0:
        raise ValueError(f"heatmap has {length} values, not a square image")
    return side
