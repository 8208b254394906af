"""The model cache: loaded on first use, least recently used out first past its memory cap, loaded again on use."""

from __future__ import annotations

import pytest

from include.local_platform.serving.model_cache import ModelCache, weight
from tests.savedmodels import export_tiny_model


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return [export_tiny_model(root / name, factor=factor) for name, factor in (("a", 2.0), ("b", 3.0), ("c", 4.0))]


def test_least_recently_used_models_are_unloaded_past_the_cap_and_reload_on_use(three_models):
    a, b, c = three_models
    cache = ModelCache(max_bytes=int(weight(a) * 2.5))  # room for two
    cache.get("a", a), cache.get("b", b)
    assert cache.loaded() == ["a", "b"]
    assert cache.peek("a") is not None  # used: now b is the least recently used
    cache.get("c", c)
    assert cache.loaded() == ["a", "c"] and cache.peek("b") is None
    reloaded = cache.get("b", b)  # the next request loads it again
    assert cache.loaded() == ["c", "b"]
    assert reloaded.signature(None).inputs.keys() == {"x", "key"}


def test_a_model_over_the_cap_alone_still_serves(three_models):
    a, b, _ = three_models
    cache = ModelCache(max_bytes=1)
    cache.get("a", a)
    cache.get("b", b)
    assert cache.loaded() == ["b"]
    cache.evict("b")
    assert cache.loaded() == []
