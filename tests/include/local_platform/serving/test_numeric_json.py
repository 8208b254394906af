"""The numeric fast path (numeric_json) gives what orjson and the list path give, byte for byte.

Every document is read both ways: the same value (or the same JSON error), and
through real SavedModels (which echo their float inputs, so any rounding
difference shows) the same predictions or the same instance error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from include.local_platform.errors import PredictionError
from include.local_platform.serving import numeric_json, prediction
from include.local_platform.serving.numeric_json import NumericArray
from include.local_platform.serving.saved_model import LoadedModel, Signature

RNG = np.random.default_rng(7)
IMAGE = RNG.random((8, 8, 3)).round(4).tolist()
PRECISE = RNG.random((8, 8, 3)).tolist()  # 17-digit floats: rounding to float32 must agree
INTS = RNG.integers(-5, 300, size=(8, 8, 3)).tolist()


def _text(value: object) -> str:
    return json.dumps(value)


def _with(image: object, row: int = 0, col: int = 0, value: object = None) -> list:
    copy = json.loads(json.dumps(image))
    copy[row][col] = value
    return copy


def _nested(depth: int) -> str:
    return "[" * depth + "1.5" + "]" * depth


# name -> one instance's JSON text for the `echo` model (image float32 [8, 8, 3], key string)
INSTANCES = {
    "floats": _text({"image": IMAGE, "key": "k"}),
    "precise": _text({"image": PRECISE, "key": "k"}),
    "ints": _text({"image": INTS, "key": "k"}),
    "mixed ints and floats": _text({"image": _with(IMAGE, 1, 1, [1, 2.5, -0]), "key": "k"}),
    "minus zero, exponents, subnormal": _text({"image": _with(IMAGE, 2, 2, [-0.0, 1e-45, 3.5E+2]), "key": "k"}),
    "beyond 2**53": _text({"image": _with(IMAGE, 0, 0, [9007199254740993, 1, 2]), "key": "k"}),
    "beyond float32": _text({"image": _with(IMAGE, 0, 0, [1e39, -1e39, 1]), "key": "k"}),
    "bools": _text({"image": _with(IMAGE, 0, 0, [True, False, 1.0]), "key": "k"}),
    "null": _text({"image": _with(IMAGE, 0, 0, [None, 1.0, 1.0]), "key": "k"}),
    "numeric strings": _text({"image": _with(IMAGE, 0, 0, ["1.0", 1.0, 1.0]), "key": "k"}),
    "ragged": _text({"image": _with(IMAGE, 0, 0, [1.0, 2.0]), "key": "k"}),
    "ragged with the same count": _text({"image": [[[0.5] * 2] + [[0.5] * 3] * 6 + [[0.5] * 4]] * 8, "key": "k"}),
    "wrong shape": _text({"image": [[[0.5] * 2] * 8] * 8, "key": "k"}),
    "one level deeper": _text({"image": [[[[0.5]] * 3] * 8] * 8, "key": "k"}),
    "nested 300 deep": '{"image": ' + _nested(300) + ', "key": "k"}',
    "nested 2000 deep": '{"image": ' + _nested(2000) + ', "key": "k"}',
    "key first, brackets in strings": '{"key": "a[b]]", "image": ' + _text(IMAGE) + "}",
    "escaped quote before": '{"key": "a\\"[", "image": ' + _text(IMAGE) + "}",
    "placeholder literal too": '{"image": ' + _text(IMAGE) + ', "key": "k", "x": -1.2345678901234567e-300}',
    "whitespace": '{ "image" :\n' + json.dumps(IMAGE, indent=1) + ' ,\t"key" : "k" }',
    "unknown field": '{"image": ' + _text(IMAGE) + ', "key": "k", "extra": [1]}',
    "image under b64": '{"image": {"b64": "AAAA"}, "key": "k"}',
    "invalid number": '{"image": ' + _text(IMAGE).replace("0.", "00.", 1) + ', "key": "k"}',
    "trailing comma": '{"image": ' + _text(IMAGE)[:-1] + ',], "key": "k"}',
    "number too large": '{"image": ' + _text(_with(IMAGE, 0, 0, [1, 1, 1])).replace("1,", "1e400,", 1)
                        + ', "key": "k"}',
    "truncated": '{"image": ' + _text(IMAGE) + ', "key": "k"',
    "bare array": _text(IMAGE),
    "empty arrays": '{"image": [[[]]], "key": "' + "k" * 300 + '"}',
}


def _plain(value: object) -> object:
    if isinstance(value, NumericArray):
        return value.as_json()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _read_both(text: bytes) -> tuple[object, object]:
    """(orjson's value or error text, the fast path's value as plain JSON or error text)."""
    answers = []
    for reader in (orjson.loads, numeric_json.loads):
        try:
            answers.append(json.dumps(_plain(reader(text))))  # json: orjson stops at 254 levels
        except orjson.JSONDecodeError as error:
            answers.append(f"JSONDecodeError: {error}")
    return answers[0], answers[1]


def _has_fast_value(value: object) -> bool:
    if isinstance(value, NumericArray):
        return True
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_has_fast_value(item) for item in items)


@pytest.mark.parametrize("name", list(INSTANCES))
def test_reads_what_orjson_reads(name):
    for text in (INSTANCES[name], '{"instances": [' + INSTANCES[name] + "]}"):
        expected, fast = _read_both(text.encode())
        assert fast == expected


@pytest.mark.parametrize("name", ["floats", "precise", "ints", "mixed ints and floats", "whitespace",
                                  "key first, brackets in strings", "bare array"])
def test_regular_arrays_take_the_fast_path(name):
    """The cases meant for the fast path do take it (else the comparisons above prove nothing)."""
    assert _has_fast_value(numeric_json.loads(INSTANCES[name].encode()))
    assert _has_fast_value(numeric_json.loads(('{"instances": [' + INSTANCES[name] + "]}").encode()))


@pytest.mark.parametrize("name", ["ragged", "ragged with the same count", "bools", "null", "numeric strings",
                                  "escaped quote before", "placeholder literal too", "beyond 2**53"])
def test_irregular_arrays_are_left_to_orjson(name):
    assert not _has_fast_value(numeric_json.loads(INSTANCES[name].encode()))


@pytest.fixture(scope="module")
def signatures(tmp_path_factory) -> dict[str, Signature]:
    """Echo models: float32 image [8, 8, 3] + key, float64 x [64], int32 n [64], string s."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("echo")

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32), tf.TensorSpec([None], tf.string)])
    def echo(image, key):
        return {"image": tf.identity(image), "total": tf.reduce_sum(image, axis=[1, 2, 3]), "key": tf.identity(key)}

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float64)])
    def float64(x):
        return {"x": tf.identity(x)}

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.int32)])
    def int32(n):
        return {"n": tf.identity(n)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def string(s):
        return {"s": tf.identity(s)}

    loaded = {}
    for function in (echo, float64, int32, string):
        module = tf.Module()
        module.serve = function
        path = Path(root / function.__name__)
        tf.saved_model.save(module, str(path), signatures={"serving_default": function})
        loaded[function.__name__] = LoadedModel(path).signature(None)
    return loaded


def _answer(signature: Signature, text: bytes, reader) -> bytes | str:
    """What the predict route answers for a body read by `reader`: the JSON error, instance error, or rows."""
    try:
        body = reader(text)
    except orjson.JSONDecodeError as error:
        return f"JSONDecodeError: {error}"
    try:
        return numeric_json.dumps({"predictions": prediction.predict(signature, body["instances"])})
    except PredictionError as error:
        return f"PredictionError: {error}"


def _same_answers(signature, instances: list[str]) -> None:
    body = ('{"instances": [' + ", ".join(instances) + "]}").encode()
    expected = _answer(signature, body, orjson.loads)
    assert _answer(signature, body, numeric_json.loads) == expected
    # as a batch job reads them: one line each, the good ones predicted together
    rows = [numeric_json.loads(line.encode()) for line in instances if _json_ok(line)]
    plain_rows = [orjson.loads(line.encode()) for line in instances if _json_ok(line)]
    if rows:
        assert _predict_or_error(signature, rows) == _predict_or_error(signature, plain_rows)


def _json_ok(line: str) -> bool:
    try:
        orjson.loads(line)
        return True
    except orjson.JSONDecodeError:
        return False


def _predict_or_error(signature, rows: list) -> bytes | str:
    try:
        return b"\n".join(numeric_json.dumps(row) for row in prediction.predict(signature, rows))
    except PredictionError as error:
        return f"PredictionError: {error}"


@pytest.mark.parametrize("name", list(INSTANCES))
def test_same_predictions_one_instance(signatures, name):
    _same_answers(signatures["echo"], [INSTANCES[name]])


@pytest.mark.parametrize("names", [("floats", "precise", "ints"), ("floats", "wrong shape"),
                                   ("floats", "one level deeper"), ("floats", "ragged"),
                                   ("floats", "bools"), ("precise", "image under b64")])
def test_same_predictions_in_one_batch(signatures, names):
    _same_answers(signatures["echo"], [INSTANCES[name] for name in names])


def test_small_arrays_beside_fast_ones(signatures):
    """A batch where one instance came the fast way and one (too small for it) as lists."""
    small = '{"image": ' + _text([[[0.25] * 3] * 8] * 8).replace(" ", "") + ', "key": "k"}'
    _same_answers(signatures["echo"], [INSTANCES["floats"], small])


@pytest.mark.parametrize("values", [RNG.random(64).tolist(), RNG.integers(-10**6, 10**6, 64).tolist(),
                                    [0.5] * 63 + [2 ** 60]])
@pytest.mark.parametrize("model", ["float64", "int32", "string"])
def test_other_dtypes_see_the_plain_values(signatures, model, values):
    """Integer and string inputs get the values orjson read (ints stay ints; errors name a list)."""
    _same_answers(signatures[model], [_text(values), _text(values)])
