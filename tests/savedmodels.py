"""Tiny SavedModels the tests export themselves (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path


def export_tiny_model(local_dir: Path, *, factor: float = 2.0) -> Path:
    """Two inputs (`x` float32 [None, 2], `key` string [None]) -> `y` = factor * sum(x), `key`.

    A negative x[0] fails inside the graph (an assertion), which is how tests
    produce an instance-content prediction error.
    """
    import tensorflow as tf

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.string, name="key")])
        def serve(self, x, key):
            check = tf.debugging.assert_non_negative(x[:, 0], message="x[0] must not be negative")
            with tf.control_dependencies([check]):
                y = tf.reduce_sum(x, axis=1) * factor
            return {"y": y, "key": tf.identity(key)}

    module = Tiny()
    tf.saved_model.save(module, str(local_dir), signatures={"serving_default": module.serve})
    return local_dir


def export_single_input_model(local_dir: Path) -> Path:
    """One input (`x` float32 [None, 3]) -> `total` = sum(x): instances are plain lists."""
    import tensorflow as tf

    class Single(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"total": tf.reduce_sum(x, axis=1)}

    module = Single()
    tf.saved_model.save(module, str(local_dir), signatures={"serving_default": module.serve})
    return local_dir


def export_bytes_model(local_dir: Path, *, examples_by_default: bool = False) -> Path:
    """`image_bytes` (JPEG, sent as {"b64": ...}) and `key` -> mean pixel brightness, `key`; also a
    second signature `examples` reading a serialized tf.Example with `image/encoded` and `key`
    (``examples_by_default``: that one is `serving_default`, as a TFRecord-fed model's is)."""
    import tensorflow as tf

    def brightness(jpegs):
        images = tf.map_fn(lambda b: tf.cast(tf.io.decode_jpeg(b, channels=3), tf.float32) / 255.0, jpegs,
                           fn_output_signature=tf.TensorSpec([None, None, 3], tf.float32))
        return tf.reduce_mean(images, axis=[1, 2, 3])

    class Images(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
                                      tf.TensorSpec([None], tf.string, name="key")])
        def serve(self, image_bytes, key):
            return {"brightness": brightness(image_bytes), "key": tf.identity(key)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def from_examples(self, examples):
            spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                    "key": tf.io.FixedLenFeature([], tf.string)}
            parsed = tf.io.parse_example(examples, spec)
            return {"brightness": brightness(parsed["image/encoded"]), "key": parsed["key"]}

    module = Images()
    signatures = {"serving_default": module.from_examples, "images": module.serve} if examples_by_default else {
        "serving_default": module.serve, "examples": module.from_examples}
    tf.saved_model.save(module, str(local_dir), signatures=signatures)
    return local_dir


def export_url_model(local_dir: Path) -> Path:
    """`file_url` (a path the service staged from gs://) -> `size` = bytes in that file: the URL variant."""
    import tensorflow as tf

    class Urls(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="file_url")])
        def serve(self, file_url):
            return {"size": tf.map_fn(lambda path: tf.strings.length(tf.io.read_file(path)), file_url,
                                      fn_output_signature=tf.int32)}

    module = Urls()
    tf.saved_model.save(module, str(local_dir), signatures={"serving_default": module.serve})
    return local_dir


def upload_dir(bucket, local_dir: Path, prefix: str) -> str:
    """Upload every file under `local_dir` to `gs://BUCKET/prefix/...`; returns that URI."""
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(local_dir).as_posix()}").upload_from_filename(str(path))
    return f"gs://{bucket.name}/{prefix}"


def export_slow_model(local_dir: Path, *, rounds: int = 300) -> Path:
    """One input (`x` float32 [None, 3]) -> `total` = sum(x), after `rounds` 400x400 matrix products that change
    nothing: a model whose every call takes long (about 0.1-0.3 s on one core)."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            step = tf.eye(400)
            _, product = tf.while_loop(lambda i, acc: i < rounds, lambda i, acc: (i + 1, tf.matmul(acc, step)),
                                       [tf.constant(0), tf.eye(400)])
            return {"total": tf.reduce_sum(x, axis=1) + 0.0 * tf.reduce_sum(product)}

    module = Slow()
    tf.saved_model.save(module, str(local_dir), signatures={"serving_default": module.serve})
    return local_dir


def export_batch_probe_model(local_dir: Path, *, rounds: int = 0) -> Path:
    """One input (`x` float32 [None, None]) -> `x` itself and `batch` = the number of instances TensorFlow was
    called with: a caller sees whether its call was joined with others. A negative x[0] fails the call in the
    graph (an assertion). `rounds` 400x400 matrix products make every call take a while (calls pile up)."""
    import tensorflow as tf

    class Probe(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
        def serve(self, x):
            check = tf.debugging.assert_non_negative(x[:, 0], message="x[0] must not be negative")
            _, product = tf.while_loop(lambda i, acc: i < rounds, lambda i, acc: (i + 1, tf.matmul(acc, acc)),
                                       [tf.constant(0), tf.eye(400)])
            with tf.control_dependencies([check]):
                count = tf.shape(x)[0]
            return {"x": tf.identity(x) + 0.0 * tf.reduce_sum(product), "batch": tf.fill([count], count)}

    module = Probe()
    tf.saved_model.save(module, str(local_dir), signatures={"serving_default": module.serve})
    return local_dir
