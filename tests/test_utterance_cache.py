"""The bounded per-utterance cache of the frozen encoder's outputs (espnet_hdmole.asr.utterance_cache)."""
import logging

import pytest
import torch

from espnet_hdmole.asr.utterance_cache import UtteranceCache
from espnet_hdmole.errors import UserError

MB = 2**20


def test_cache_keeps_at_most_its_bound_dropping_the_least_recently_used(caplog):
    cache = UtteranceCache(1.0)  # 1 MB: three 0.4-MB entries do not fit
    x = {u: torch.zeros(MB // 10, dtype=torch.float32) for u in "abc"}  # 0.4 MB each
    cache.put("a", x["a"])
    cache.put("b", x["b"])
    assert cache.get("a") is x["a"]  # a is now more recent than b
    with caplog.at_level(logging.WARNING):
        cache.put("c", x["c"])
        cache.put("d", torch.zeros(MB // 10))
    assert "c" in cache and "d" in cache and "b" not in cache and "a" not in cache
    assert cache.bytes == 2 * 4 * (MB // 10) <= cache.max_bytes and cache.evictions == 2
    assert sum("encoder_cache_mb" in r.message for r in caplog.records) == 1  # said once


def test_an_entry_larger_than_the_bound_is_not_kept():
    cache = UtteranceCache(0.5)
    cache.put("small", torch.zeros(10))
    cache.put("big", torch.zeros(MB))  # 4 MB
    assert "big" not in cache and "small" in cache and cache.bytes == 40
    cache.put("small", torch.zeros(20))  # replacing an entry counts its new size only
    assert cache.bytes == 80 and len(cache) == 1


@pytest.mark.parametrize("bad", [0, -1, "big", True])
def test_a_bad_bound_names_the_key(bad):
    with pytest.raises(UserError, match="model_conf.encoder_cache_mb"):
        UtteranceCache(bad)
